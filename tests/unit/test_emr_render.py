"""EMR request rendering: templates filled from config, every request checked against botocore's models
(offline), the Step Functions definition's structure, and the pure helpers of the emr commands."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from classeg.config import load_config
from classeg.emr import aws, render, security

REPO = Path(__file__).resolve().parents[2]
SFN_ROLE = "arn:aws:iam::123456789012:role/classeg-sfn"
SCHEDULER_ROLE = "arn:aws:iam::123456789012:role/classeg-scheduler"
EMR_OVERRIDES = ["emr.wheelhouse=s3://bucket/classeg/wheelhouse/", "emr.log_uri=s3://bucket/classeg/logs",
                 f"emr.state_machine_role_arn={SFN_ROLE}", f"emr.scheduler_role_arn={SCHEDULER_ROLE}"]


def emr_config(*overrides: str):
    return load_config([REPO / "conf" / "emr.yaml"], [*EMR_OVERRIDES, *overrides])


def configurations(request: dict) -> dict[str, dict]:
    return {item["Classification"]: item for item in request["Configurations"]}


# --- the renderer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template, values, expected", [
    ({"a": "${n}"}, {"n": 3}, {"a": 3}),
    ({"a": "${n}", "b": 1}, {"n": None}, {"b": 1}),
    ({"a": "x-${n}-y"}, {"n": 3}, {"a": "x-3-y"}),
    ({"a": "${flag}/${flag}"}, {"flag": False}, {"a": "false/false"}),
    (["a", "${*rest}", "z"], {"rest": ["b", "c"]}, ["a", "b", "c", "z"]),
    (["a", "${*rest}"], {"rest": []}, ["a"]),
    (["${n}", "k"], {"n": None}, ["k"]),
    ({"keep": None, "path": "$.cluster.ClusterId"}, {}, {"keep": None, "path": "$.cluster.ClusterId"}),
    ({"a": "${d}"}, {"d": {"x": [1]}}, {"a": {"x": [1]}}),
])
def test_render_placeholders(template, values, expected):
    assert render.render(template, values) == expected


@pytest.mark.parametrize("template, values, message", [
    ({"a": "${missing}"}, {}, "no value for ${missing}"),
    ({"a": "x${n}"}, {"n": None}, "${n} is used inside a string but has no value"),
    (["${*n}"], {"n": "not a list"}, "${*n} needs a list"),
])
def test_render_rejects_bad_values(template, values, message):
    with pytest.raises(ValueError, match=message.replace("$", r"\$").replace("{", r"\{").replace("*", r"\*")):
        render.render(template, values, template="t.yaml")


def test_every_template_placeholder_is_filled():
    text = {path.name: path.read_text() for path in (REPO / "emr" / "templates").glob("*.yaml")}
    assert set(text) == {"cluster.yaml", "step.yaml", "scoring-state-machine.yaml", "schedule.yaml"}
    cfg = emr_config()
    rendered = json.dumps([render.cluster_request(cfg), render.step(cfg, "score", ["--x", "1"]),
                           render.scoring_state_machine(cfg, archive="s3://a/scans", classifier="s3://a/c",
                                                        output="s3://a/scores"),
                           render.schedule_request(cfg, expression="cron(0 2 * * ? *)", target_arn="arn:x",
                                                   archive="s3://a/scans", output="s3://a/scores").params])
    assert "${" not in rendered


# --- the cluster ----------------------------------------------------------------------------------------------


def test_cluster_request_gpu_settings():
    request = render.cluster_request(emr_config())
    groups = {group["InstanceRole"]: group for group in request["Instances"]["InstanceGroups"]}
    assert groups["MASTER"] == {"Name": "primary", "InstanceRole": "MASTER", "Market": "ON_DEMAND",
                                "InstanceType": "m5.xlarge", "InstanceCount": 1}
    assert groups["CORE"] == {"Name": "gpu-core", "InstanceRole": "CORE", "Market": "ON_DEMAND",
                              "InstanceType": "g5.xlarge", "InstanceCount": 2}
    assert request["ReleaseLabel"] == "emr-7.13.0"
    assert request["LogUri"] == "s3://bucket/classeg/logs/"
    assert request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    assert "Ec2SubnetId" not in request["Instances"] and "Ec2KeyName" not in request["Instances"]
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    assert request["EbsRootVolumeSize"] == 40
    assert request["BootstrapActions"] == [{
        "Name": "classeg-environment",
        "ScriptBootstrapAction": {"Path": "s3://bucket/classeg/wheelhouse/bootstrap.sh",
                                  "Args": ["--wheelhouse", "s3://bucket/classeg/wheelhouse", "--venv",
                                           "/opt/classeg/venv", "--gpu-cgroup"]}}]
    conf = configurations(request)
    spark = conf["spark-defaults"]["Properties"]
    assert spark["spark.executor.resource.gpu.amount"] == "1"
    assert spark["spark.executor.resource.gpu.discoveryScript"] == "/usr/lib/spark/scripts/gpu/getGpusResources.sh"
    assert spark["spark.dynamicAllocation.enabled"] == "false"
    assert spark["spark.sql.execution.arrow.maxRecordsPerBatch"] == "64"
    assert spark["spark.python.worker.reuse"] == "true"
    assert spark["spark.pyspark.python"] == "/opt/classeg/venv/bin/python"
    assert spark["spark.executor.instances"] == "2"
    assert "spark.task.resource.gpu.amount" not in spark  # per step
    assert conf["spark-env"]["Configurations"] == [
        {"Classification": "export", "Properties": {"PYSPARK_PYTHON": "/opt/classeg/venv/bin/python",
                                                    "ARROW_LIBHDFS_DIR": "/usr/lib/hadoop/lib/native"}}]
    # pyarrow's libhdfs, for an hdfs:// training cache, on the executors and a cluster-mode driver too
    assert spark["spark.executorEnv.ARROW_LIBHDFS_DIR"] == spark["spark.yarn.appMasterEnv.ARROW_LIBHDFS_DIR"] == \
        "/usr/lib/hadoop/lib/native"
    yarn = conf["yarn-site"]["Properties"]
    assert yarn["yarn.nodemanager.resource-plugins"] == "yarn.io/gpu"
    assert yarn["yarn.resource-types"] == "yarn.io/gpu"
    assert yarn["yarn.nodemanager.linux-container-executor.cgroups.mount-path"] == "/spark-rapids-cgroup"
    executor = {item["Classification"]: item["Properties"] for item in conf["container-executor"]["Configurations"]}
    assert executor == {"gpu": {"module.enabled": "true"},
                        "cgroups": {"root": "/spark-rapids-cgroup", "yarn-hierarchy": "yarn"}}
    assert conf["capacity-scheduler"]["Properties"] == {
        "yarn.scheduler.capacity.resource-calculator":
            "org.apache.hadoop.yarn.util.resource.DominantResourceCalculator"}
    assert {"Key": "project", "Value": "classeg"} in request["Tags"]
    # Every EMR configuration property is a string, as the API requires.
    for item in request["Configurations"] + conf["spark-env"]["Configurations"]:
        assert all(isinstance(value, str) for value in item["Properties"].values()), item


def test_cluster_request_options_from_config():
    cfg = emr_config("emr.bid_price=0.6", "emr.subnet_id=subnet-0abc", "emr.key_name=ops",
                     "emr.idle_timeout_minutes=0", "emr.core_instance_type=g6.12xlarge", "emr.gpus_per_node=4",
                     "emr.core_instance_count=3", "spark.arrow_batch_size=16", "spark.python_worker_reuse=false",
                     "emr.python=/srv/env/bin/python3.11")
    request = render.cluster_request(cfg)
    core = request["Instances"]["InstanceGroups"][1]
    assert (core["Market"], core["BidPrice"], core["InstanceType"], core["InstanceCount"]) == (
        "SPOT", "0.6", "g6.12xlarge", 3)
    assert request["Instances"]["Ec2SubnetId"] == "subnet-0abc"
    assert request["Instances"]["Ec2KeyName"] == "ops"
    assert "AutoTerminationPolicy" not in request
    spark = configurations(request)["spark-defaults"]["Properties"]
    assert spark["spark.executor.resource.gpu.amount"] == "4"
    assert spark["spark.sql.execution.arrow.maxRecordsPerBatch"] == "16"
    assert spark["spark.python.worker.reuse"] == "false"
    assert request["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"][3] == "/srv/env"


@pytest.mark.parametrize("overrides, message", [
    (["emr.wheelhouse=null"], "emr.wheelhouse is not set"),
    (["emr.wheelhouse=/local/wheels"], "emr.wheelhouse must be an s3:// URI"),
    (["emr.log_uri=null"], "emr.log_uri is not set"),
    (["emr.core_instance_type=m5.xlarge"], "must be a GPU instance type"),
    (["emr.gpus_per_node=2"], "g5.xlarge has 1 GPU"),
    (["emr.python=venv/bin/python"], "emr.python must be an absolute path"),
    (["emr.idle_timeout_minutes=-1"], "idle_timeout_minutes"),
    (["emr.bootstrap_uri=https://example.com/b.sh"], "emr.bootstrap_uri must be an s3:// URI"),
])
def test_cluster_request_rejects_bad_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        render.cluster_request(emr_config(*overrides))


# --- steps ----------------------------------------------------------------------------------------------------


def test_step_passes_job_flags_through():
    request = render.add_steps_request(emr_config(), "j-1ABC", "train", ["--epochs", "3", "--conf", "my.yaml"])
    assert request.operation == "AddJobFlowSteps"
    assert request.params["JobFlowId"] == "j-1ABC"
    [step] = request.params["Steps"]
    assert step["Name"] == "classeg train"
    assert step["ActionOnFailure"] == "CONTINUE"
    assert step["HadoopJarStep"] == {"Jar": "command-runner.jar", "Args": [
        "spark-submit", "--deploy-mode", "cluster", "--master", "yarn",
        "--conf", "spark.task.resource.gpu.amount=1",
        "--files", "s3://bucket/classeg/wheelhouse/conf/emr.yaml",
        "s3://bucket/classeg/wheelhouse/jobs/train.py", "--conf", "emr.yaml",
        "--epochs", "3", "--conf", "my.yaml"]}


@pytest.mark.parametrize("overrides, job, amount", [
    ([], "train", "1"),
    ([], "score", "0.25"),                                   # g5.xlarge: 4 vCPUs, 1 GPU
    ([], "ingest", "0.25"),
    (["emr.core_instance_type=g6.12xlarge", "emr.gpus_per_node=4"], "evaluate", repr(1 / 12)),
    (["emr.core_instance_type=g5.2xlarge", "emr.tasks_per_gpu=6"], "score", repr(1 / 6)),
    (["emr.tasks_per_gpu=1"], "score", "1"),
])
def test_task_gpu_amount(overrides, job, amount):
    cfg = emr_config(*overrides)
    assert render.task_gpu_amount(cfg, job) == amount
    # Spark derives tasks per GPU as int(1 / amount): the written value must not lose a slot.
    if job != "train":
        assert int(1 / float(amount)) == render.tasks_per_gpu(cfg)


def test_unknown_instance_type_needs_tasks_per_gpu():
    cfg = emr_config("emr.core_instance_type=p5.48xlarge")
    with pytest.raises(ValueError, match="set emr.tasks_per_gpu"):
        render.task_gpu_amount(cfg, "score")
    assert render.task_gpu_amount(emr_config("emr.core_instance_type=p5.48xlarge", "emr.tasks_per_gpu=24"),
                                  "score") == repr(1 / 24)


@pytest.mark.parametrize("cluster_id, job, message", [
    ("j-1", "predict", "job must be one of"),
    ("cluster-1", "train", "cluster id must look like j-"),
    ("", "train", "cluster id must look like j-"),
])
def test_add_steps_rejects_bad_input(cluster_id, job, message):
    with pytest.raises(ValueError, match=message):
        render.add_steps_request(emr_config(), cluster_id, job, [])


# --- scheduled scoring ----------------------------------------------------------------------------------------


def scoring_definition(cfg=None, **kw):
    args = {"archive": "s3://archive/scans", "classifier": "s3://models/classifier",
            "segmenter": "s3://models/segmenter", "output": "s3://results/scores"} | kw
    return render.scoring_state_machine(cfg or emr_config(), **args)


def test_state_machine_creates_scores_and_always_terminates():
    definition = scoring_definition()
    states = definition["States"]
    assert definition["StartAt"] == "CreateCluster"
    assert states["CreateCluster"]["Resource"] == "arn:aws:states:::elasticmapreduce:createCluster.sync"
    assert states["Score"]["Resource"] == "arn:aws:states:::elasticmapreduce:addStep.sync"
    assert states["TerminateCluster"]["Resource"] == "arn:aws:states:::elasticmapreduce:terminateCluster.sync"
    assert states["Score"]["Parameters"]["ClusterId.$"] == "$.cluster.ClusterId"
    assert states["CreateCluster"]["ResultSelector"] == {"ClusterId.$": "$.ClusterId"}
    # A failed scoring step still terminates the cluster, then the execution fails.
    assert states["Score"]["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error",
                                         "Next": "TerminateAfterFailure"}]
    assert states["TerminateAfterFailure"]["Resource"].endswith(":terminateCluster.sync")
    assert states["TerminateAfterFailure"]["Next"] == "ScoringFailed"
    assert states["ScoringFailed"]["Type"] == "Fail"
    assert states["TerminateCluster"]["End"] is True
    assert states["TerminateCluster"]["ResultPath"] is None  # a literal null in the template survives
    args = states["Score"]["Parameters"]["Step"]["HadoopJarStep"]["Args"]
    assert args[args.index("emr.yaml") + 1:] == ["--archive", "s3://archive/scans", "--classifier",
                                                 "s3://models/classifier", "--segmenter", "s3://models/segmenter",
                                                 "--output", "s3://results/scores"]
    assert "s3://bucket/classeg/wheelhouse/jobs/score.py" in args
    cluster = states["CreateCluster"]["Parameters"]
    assert cluster["Name"] == "classeg-scheduled-scoring"
    render.validate(render.ApiRequest("emr", "RunJobFlow", cluster))


def test_state_machine_without_segmenter():
    args = scoring_definition(segmenter=None)["States"]["Score"]["Parameters"]["Step"]["HadoopJarStep"]["Args"]
    assert "--segmenter" not in args


@pytest.mark.parametrize("field", ["archive", "classifier", "output"])
def test_state_machine_needs_s3_locations(field):
    with pytest.raises(ValueError, match=f"--{field} must be an s3:// URI"):
        scoring_definition(**{field: "/local/folder"})


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(StartAt="Nowhere"), "StartAt 'Nowhere' is not a state"),
    (lambda d: d["States"]["Score"].update(Next="Missing"), "goes to unknown state 'Missing'"),
    (lambda d: d["States"]["TerminateCluster"].pop("End"), "exactly one of Next and End"),
    (lambda d: d["States"]["CreateCluster"]["Catch"][0].update(Next="Score")
        or d["States"]["TerminateAfterFailure"].update(Next="TerminateCluster"), "never reached: \\['ScoringFailed'\\]"),
])
def test_check_state_machine_finds_defects(mutate, message):
    definition = scoring_definition()
    mutate(definition)
    with pytest.raises(ValueError, match=message):
        render.check_state_machine(definition)


def test_state_machine_and_schedule_requests():
    cfg = emr_config()
    machine = render.state_machine_request(cfg, scoring_definition(cfg))
    assert machine.operation == "CreateStateMachine"
    assert machine.params["name"] == "classeg-scoring"
    assert machine.params["roleArn"] == SFN_ROLE
    assert json.loads(machine.params["definition"])["StartAt"] == "CreateCluster"
    arn = render.state_machine_arn(cfg)
    assert arn == "arn:aws:states:us-east-1:123456789012:stateMachine:classeg-scoring"
    schedule = render.schedule_request(cfg, expression="cron(0 2 * * ? *)", target_arn=arn,
                                       archive="s3://archive/scans", output="s3://results/scores")
    assert schedule.params["ScheduleExpression"] == "cron(0 2 * * ? *)"
    assert schedule.params["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert schedule.params["Target"]["Arn"] == arn
    assert schedule.params["Target"]["RoleArn"] == SCHEDULER_ROLE
    assert schedule.params["ScheduleExpressionTimezone"] == "UTC"


@pytest.mark.parametrize("expression, ok", [
    ("cron(0 2 * * ? *)", True),
    ("cron(15 1 ? * MON-FRI *)", True),
    ("rate(6 hours)", True),
    ("cron(0 2 * * *)", False),           # 5 fields: the Unix form
    ("cron(0 2 * * * *)", False),         # no '?'
    ("0 2 * * ? *", False),
    ("", False),
])
def test_schedule_expression(expression, ok):
    if ok:
        assert render.check_schedule_expression(expression) == expression
    else:
        with pytest.raises(ValueError, match="cron"):
            render.check_schedule_expression(expression)


@pytest.mark.parametrize("key", ["emr.state_machine_role_arn", "emr.scheduler_role_arn"])
def test_roles_must_be_role_arns(key):
    cfg = emr_config(f"{key}=my-role")
    with pytest.raises(ValueError, match=f"{key} must be an IAM role ARN"):
        render.state_machine_request(cfg, scoring_definition(cfg))
        render.schedule_request(cfg, expression="rate(1 day)", target_arn="arn:x", archive="s3://a/b",
                                output="s3://a/c")


# --- validation against botocore's models ---------------------------------------------------------------------


def test_validate_catches_what_aws_would_reject():
    good = render.cluster_request(emr_config())
    render.validate(render.ApiRequest("emr", "RunJobFlow", good))
    bad = json.loads(json.dumps(good))
    bad["Instances"]["InstanceGroups"][1]["InstanceCount"] = "2"
    bad["Configurations"][1]["Properties"]["spark.executor.instances"] = 2
    with pytest.raises(ValueError, match="RunJobFlow request is invalid") as err:
        render.validate(render.ApiRequest("emr", "RunJobFlow", bad))
    assert "InstanceCount" in str(err.value) and "spark.executor.instances" in str(err.value)
    with pytest.raises(ValueError, match="Missing required parameter"):
        render.validate(render.ApiRequest("emr", "AddJobFlowSteps", {"JobFlowId": "j-1"}))
    with pytest.raises(ValueError, match="no operation 'RunCluster'"):
        render.validate(render.ApiRequest("emr", "RunCluster", {}))


# --- security configuration and instance role policy ----------------------------------------------------------

KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
CERTS = "s3://bucket/classeg/certs.zip"
AT_REST = {"S3EncryptionConfiguration": {"EncryptionMode": "SSE-KMS", "AwsKmsKey": KEY},
           "LocalDiskEncryptionConfiguration": {"EncryptionKeyProviderType": "AwsKms", "AwsKmsKey": KEY,
                                                "EnableEbsEncryption": True}}
IN_TRANSIT = {"TLSCertificateConfiguration": {"CertificateProviderType": "PEM", "S3Object": CERTS}}


@pytest.mark.parametrize("overrides, expected", [
    ([f"emr.kms_key_arn={KEY}"],
     {"EnableAtRestEncryption": True, "EnableInTransitEncryption": False, "AtRestEncryptionConfiguration": AT_REST}),
    ([f"emr.tls_certificates={CERTS}"],
     {"EnableAtRestEncryption": False, "EnableInTransitEncryption": True,
      "InTransitEncryptionConfiguration": IN_TRANSIT}),
    ([f"emr.kms_key_arn={KEY}", f"emr.tls_certificates={CERTS}"],
     {"EnableAtRestEncryption": True, "EnableInTransitEncryption": True, "AtRestEncryptionConfiguration": AT_REST,
      "InTransitEncryptionConfiguration": IN_TRANSIT}),
])
def test_security_configuration_document(overrides, expected):
    assert security.security_configuration(emr_config(*overrides)) == {"EncryptionConfiguration": expected}


@pytest.mark.parametrize("overrides, kw, message", [
    ([], {"at_rest": True}, "emr.kms_key_arn is not set: at-rest encryption needs a KMS key"),
    ([f"emr.kms_key_arn={KEY}"], {"in_transit": True}, "emr.tls_certificates is not set"),
    ([], {}, "needs at-rest or in-transit encryption: set emr.kms_key_arn"),
    (["emr.kms_key_arn=alias/classeg"], {}, "emr.kms_key_arn must be a KMS key ARN like .*, got 'alias/classeg'"),
    (["emr.kms_key_arn=1234abcd-12ab-34cd-56ef-1234567890ab"], {}, "emr.kms_key_arn must be a KMS key ARN"),
    (["emr.tls_certificates=https://example.com/certs.zip"], {}, "emr.tls_certificates must be the s3:// URI"),
    (["emr.tls_certificates=s3://bucket/certs/"], {}, "emr.tls_certificates must be the s3:// URI of a .zip"),
])
def test_security_configuration_rejects_missing_or_bad_keys(overrides, kw, message):
    with pytest.raises(ValueError, match=message):
        security.security_configuration(emr_config(*overrides), **kw)


def test_security_plan_names_and_creates():
    assert security.plan(emr_config()) is None
    given = security.plan(emr_config(f"emr.kms_key_arn={KEY}", "emr.security_configuration=hospital-standard"))
    assert (given.name, given.document, given.create) == ("hospital-standard", None, None)

    cfg = emr_config(f"emr.kms_key_arn={KEY}", f"emr.tls_certificates={CERTS}")
    planned = security.plan(cfg)
    assert planned.name.startswith("classeg-") and len(planned.name) == len("classeg-") + 12
    assert planned.name == security.plan(emr_config(f"emr.tls_certificates={CERTS}", f"emr.kms_key_arn={KEY}")).name
    assert planned.name != security.plan(emr_config(f"emr.kms_key_arn={KEY}")).name
    assert (planned.create.service, planned.create.operation) == ("emr", "CreateSecurityConfiguration")
    assert planned.create.params["Name"] == planned.name
    assert json.loads(planned.create.params["SecurityConfiguration"]) == security.security_configuration(cfg)
    assert planned.same_document(planned.create.params["SecurityConfiguration"])
    assert not planned.same_document(json.dumps(security.security_configuration(emr_config(f"emr.kms_key_arn={KEY}"))))

    request = render.cluster_request(cfg, security_configuration=planned.name)
    assert request["SecurityConfiguration"] == planned.name
    assert request["LogEncryptionKmsKeyId"] == KEY
    assert "SecurityConfiguration" not in render.cluster_request(cfg)
    assert "LogEncryptionKmsKeyId" not in render.cluster_request(emr_config())
    definition = scoring_definition(cfg, security_configuration=planned.name)
    assert definition["States"]["CreateCluster"]["Parameters"]["SecurityConfiguration"] == planned.name


def test_cli_up_dry_run_creates_security_configuration_first(capsys):
    code, out, _ = run_cli(capsys, "emr", "up", "--dry-run", "--conf", str(REPO / "conf" / "emr.yaml"),
                           *sets(f"emr.kms_key_arn={KEY}", f"emr.tls_certificates={CERTS}"))
    assert code == 0
    create, cluster = out["requests"]
    assert create["operation"] == "CreateSecurityConfiguration"
    assert cluster["operation"] == "RunJobFlow"
    assert cluster["params"]["SecurityConfiguration"] == create["params"]["Name"]


POLICY_URIS = ["emr.wheelhouse=s3://bucket/classeg/wheelhouse/", "emr.log_uri=s3://bucket/classeg/logs",
               "score.archive=s3://pacs-export/mri/2026", "score.classifier=s3://bucket/classeg/models/classifier",
               "score.output=s3://bucket/classeg/scores/", "train.output=s3://bucket/classeg/models/classifier",
               "ingest.output=s3://bucket/classeg/tables/lgg", f"emr.tls_certificates={CERTS}",
               "score.patient_key_secret=s3://secrets-bucket/classeg/patient-key", f"emr.kms_key_arn={KEY}"]


def test_instance_role_policy_from_configured_uris():
    policy = security.instance_role_policy(emr_config(*POLICY_URIS), write=["s3://bucket/classeg/eval/"])
    assert policy == {"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadInputs", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [
            "arn:aws:s3:::bucket/classeg/certs.zip*",
            "arn:aws:s3:::bucket/classeg/models/classifier*",
            "arn:aws:s3:::bucket/classeg/wheelhouse*",
            "arn:aws:s3:::pacs-export/mri/2026*",
            "arn:aws:s3:::secrets-bucket/classeg/patient-key*"]},
        {"Sid": "WriteOutputs", "Effect": "Allow",
         "Action": ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:PutObject"], "Resource": [
            "arn:aws:s3:::bucket/classeg/eval*",
            "arn:aws:s3:::bucket/classeg/logs*",
            "arn:aws:s3:::bucket/classeg/models/classifier*",
            "arn:aws:s3:::bucket/classeg/scores*",
            "arn:aws:s3:::bucket/classeg/tables/lgg*"]},
        {"Sid": "ListBucket1", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": ["arn:aws:s3:::bucket"],
         "Condition": {"StringLike": {"s3:prefix": [
             "classeg/certs.zip*", "classeg/eval*", "classeg/logs*", "classeg/models/classifier*",
             "classeg/scores*", "classeg/tables/lgg*", "classeg/wheelhouse*"]}}},
        {"Sid": "ListBucket2", "Effect": "Allow", "Action": ["s3:ListBucket"],
         "Resource": ["arn:aws:s3:::pacs-export"], "Condition": {"StringLike": {"s3:prefix": ["mri/2026*"]}}},
        {"Sid": "ListBucket3", "Effect": "Allow", "Action": ["s3:ListBucket"],
         "Resource": ["arn:aws:s3:::secrets-bucket"],
         "Condition": {"StringLike": {"s3:prefix": ["classeg/patient-key*"]}}},
        {"Sid": "UseKmsKey", "Effect": "Allow", "Action": ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"],
         "Resource": [KEY]},
    ]}


def test_instance_role_policy_whole_bucket_and_partition():
    cfg = load_config(overrides=["emr.region=cn-north-1", "emr.wheelhouse=s3://wheels-cn",
                                 "emr.log_uri=s3://logs-cn/emr/"])
    statements = {s["Sid"]: s for s in security.instance_role_policy(cfg)["Statement"]}
    assert statements["ReadInputs"]["Resource"] == ["arn:aws-cn:s3:::wheels-cn/*"]
    assert statements["ListBucket2"] == {"Sid": "ListBucket2", "Effect": "Allow", "Action": ["s3:ListBucket"],
                                         "Resource": ["arn:aws-cn:s3:::wheels-cn"]}  # whole bucket: no condition
    assert statements["ListBucket1"]["Condition"] == {"StringLike": {"s3:prefix": ["emr*"]}}
    assert "UseKmsKey" not in statements


@pytest.mark.parametrize("overrides, kw, message", [
    (["emr.wheelhouse=null", "emr.log_uri=null"], {}, "no s3:// location is configured"),
    (["spark.app_name=s3://bucket/app"], {}, "spark.app_name holds an s3:// location .* has no rule"),
    (["emr.kms_key_arn=alias/x"], {}, "emr.kms_key_arn must be a KMS key ARN"),
    ([], {"write": ["/local/eval"]}, "--write must be an s3://bucket/prefix URI, got '/local/eval'"),
])
def test_instance_role_policy_rejects_bad_input(overrides, kw, message):
    with pytest.raises(ValueError, match=message):
        security.instance_role_policy(emr_config(*overrides), **kw)


def _good_policy():
    return security.instance_role_policy(emr_config(*POLICY_URIS))


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.update(Version="2008-10-17"), "Version must be '2012-10-17'"),
    (lambda p: p.update(Statement=[]), "Statement must be a non-empty list"),
    (lambda p: p["Statement"][1].update(Sid="ReadInputs"), "Sids must be unique"),
    (lambda p: p["Statement"][0].update(Effect="Deny"), "Effect must be 'Allow'"),
    (lambda p: p["Statement"][0].update(Action="s3:GetObject"), "Action must be a non-empty list"),
    (lambda p: p["Statement"][0].update(Resource=["arn:aws:s3:::bucket"]), "must look like arn:aws:s3:::bucket/"),
    (lambda p: p["Statement"][0].update(Resource=["*"]), "is not an S3 or KMS ARN"),
    (lambda p: p["Statement"][2].update(Resource=["arn:aws:s3:::bucket/x*"]), "ListBucket applies to buckets"),
    (lambda p: p["Statement"][-1].update(Resource=["arn:aws:kms:us-east-1:123456789012:alias/x"]),
     "is not a KMS key ARN"),
    (lambda p: p["Statement"][0]["Resource"].extend(f"arn:aws:s3:::bucket/p{i:04d}*" for i in range(500)),
     "IAM allows 10240"),
])
def test_check_policy_finds_defects(mutate, message):
    policy = _good_policy()
    security.check_policy(policy)
    mutate(policy)
    with pytest.raises(ValueError, match=message):
        security.check_policy(policy)


def test_cli_policy_prints_the_document(capsys):
    code, out, _ = run_cli(capsys, "emr", "policy", "--conf", str(REPO / "conf" / "emr.yaml"),
                           "--write", "s3://bucket/classeg/eval", *sets(*POLICY_URIS))
    assert code == 0
    assert out == security.instance_role_policy(emr_config(*POLICY_URIS), write=["s3://bucket/classeg/eval"])


# --- step logs (pure) -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("log_uri, expected", [
    ("s3://logs/classeg/", "s3://logs/classeg/j-1/steps/s-2/stderr.gz"),
    ("s3n://logs/classeg/", "s3://logs/classeg/j-1/steps/s-2/stderr.gz"),
    ("s3://logs", "s3://logs/j-1/steps/s-2/stderr.gz"),
    (None, None),
])
def test_step_log_location(log_uri, expected):
    assert aws.step_log_location(log_uri, "j-1", "s-2") == expected


def test_failed_step_message_names_reason_and_logs():
    step = {"Id": "s-2", "Name": "classeg train", "Status": {
        "State": "FAILED",
        "FailureDetails": {"Reason": "Unknown Error.", "Message": "Exception in thread main: exit code 1",
                           "LogFile": "s3n://logs/classeg/j-1/steps/s-2/stderr.gz"},
        "StateChangeReason": {}}}
    message = aws.step_failure_message(step, cluster_id="j-1", log_uri="s3n://logs/classeg/")
    assert message.startswith("step s-2 (classeg train) on cluster j-1 ended FAILED")
    assert "reason: Unknown Error. Exception in thread main: exit code 1" in message
    assert "step log: s3://logs/classeg/j-1/steps/s-2/stderr.gz" in message
    assert "Spark driver and executor logs: s3://logs/classeg/j-1/containers/" in message


def test_unfinished_step_message():
    step = {"Id": "s-3", "Name": "classeg score", "Status": {"State": "RUNNING"}}
    message = aws.step_failure_message(step, cluster_id="j-1", log_uri=None, waited_seconds=120)
    assert message == ("step s-3 (classeg score) on cluster j-1 is still RUNNING after 120 s: gave up waiting; "
                       "the cluster has no LogUri, so its step logs were not kept")


# --- the command line (dry runs print the exact requests) -----------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, dict | None, str]:
    from classeg.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else None), captured.err


def sets(*overrides: str) -> list[str]:
    return [item for override in (*EMR_OVERRIDES, *overrides) for item in ("--set", override)]


def test_cli_up_dry_run(capsys):
    code, out, _ = run_cli(capsys, "emr", "up", "--dry-run", "--conf", str(REPO / "conf" / "emr.yaml"),
                           "--core-instance-count", "4", *sets())
    assert code == 0
    [request] = out["requests"]
    assert (request["service"], request["operation"]) == ("emr", "RunJobFlow")
    assert request["params"]["Instances"]["InstanceGroups"][1]["InstanceCount"] == 4
    assert request["params"] == render.cluster_request(emr_config("emr.core_instance_count=4"))


def test_cli_submit_dry_run(capsys):
    code, out, _ = run_cli(capsys, "emr", "submit", "--cluster-id", "j-XYZ", "--job", "score", "--dry-run",
                           *sets(), "--", "--archive", "s3://a/scans", "--full")
    assert code == 0
    [request] = out["requests"]
    assert request["operation"] == "AddJobFlowSteps"
    assert request["params"]["Steps"][0]["HadoopJarStep"]["Args"][-3:] == ["--archive", "s3://a/scans", "--full"]


def test_cli_wait_down_schedule_dry_runs(capsys):
    code, out, _ = run_cli(capsys, "emr", "wait", "--cluster-id", "j-1", "--step-id", "s-1", "--dry-run",
                           "--poll-seconds", "60", "--timeout-minutes", "90")
    assert code == 0
    assert out["requests"] == [{"service": "emr", "operation": "DescribeStep",
                                "params": {"ClusterId": "j-1", "StepId": "s-1"}}]
    assert out["waiter"] == {"name": "step_complete", "Delay": 60, "MaxAttempts": 90}
    code, out, _ = run_cli(capsys, "emr", "down", "--cluster-id", "j-1", "--cluster-id", "j-2", "--dry-run")
    assert out["requests"] == [{"service": "emr", "operation": "TerminateJobFlows",
                                "params": {"JobFlowIds": ["j-1", "j-2"]}}]
    code, out, _ = run_cli(capsys, "emr", "schedule", "--cron", "cron(0 2 * * ? *)", "--archive", "s3://a/scans",
                           "--classifier", "s3://m/c", "--output", "s3://r/scores", "--dry-run", *sets())
    assert code == 0
    machine, schedule = out["requests"]
    assert (machine["service"], machine["operation"]) == ("stepfunctions", "CreateStateMachine")
    assert (schedule["service"], schedule["operation"]) == ("scheduler", "CreateSchedule")
    assert schedule["params"]["Target"]["Arn"] == (
        "arn:aws:states:us-east-1:123456789012:stateMachine:classeg-scoring")
    assert json.loads(machine["params"]["definition"])["States"]["Score"]["Type"] == "Task"


@pytest.mark.parametrize("argv, message", [
    (["emr", "up", "--dry-run"], "emr.wheelhouse is not set"),
    (["emr", "schedule", "--cron", "daily", "--archive", "s3://a/s", "--classifier", "s3://m/c", "--output",
      "s3://r/s", "--dry-run"], "--cron must be cron("),
    (["emr", "wait", "--cluster-id", "j-1", "--step-id", "s-1", "--poll-seconds", "0"], "--poll-seconds"),
])
def test_cli_errors_exit_1_with_message(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 1 and out is None
    assert message in err


# --- bootstrap.sh ---------------------------------------------------------------------------------------------


def test_bootstrap_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (`make setup` installs it with apt-get)")
    result = subprocess.run(["shellcheck", "--severity=style", str(REPO / "emr" / "bootstrap.sh")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
