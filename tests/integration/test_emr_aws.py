"""`classeg emr up|submit|wait|down|schedule` against moto's EMR, Step Functions and EventBridge Scheduler
servers on 127.0.0.1 (real HTTP, real boto3 clients, no AWS account)."""
from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from classeg.cli import main
from classeg.config import load_config
from classeg.emr import aws

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
SFN_ROLE = "arn:aws:iam::123456789012:role/classeg-sfn"  # moto's default account
SCHEDULER_ROLE = "arn:aws:iam::123456789012:role/classeg-scheduler"


@pytest.fixture(scope="module")
def emr_moto(moto_endpoint):
    """The session's moto server on 127.0.0.1 (EMR, Step Functions, Scheduler, S3; tests/conftest.py)."""
    return moto_endpoint


@pytest.fixture
def overrides(emr_moto):
    return ["--conf", str(REPO / "conf" / "emr.yaml"),
            "--set", f"emr.endpoint_url={emr_moto}", "--set", f"s3.endpoint_url={emr_moto}",
            "--set", "emr.wheelhouse=s3://classeg-test/wheelhouse", "--set", "emr.log_uri=s3://classeg-test/logs",
            "--set", f"emr.state_machine_role_arn={SFN_ROLE}", "--set", f"emr.scheduler_role_arn={SCHEDULER_ROLE}"]


def client(endpoint: str, service: str):
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION)


def run_cli(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else None), captured.err


def test_cluster_lifecycle(emr_moto, overrides, capsys):
    emr = client(emr_moto, "emr")
    code, out, _ = run_cli(capsys, "emr", "up", "--wait", "--poll-seconds", "1", *overrides)
    assert code == 0, out
    cluster_id = out["cluster_id"]
    assert cluster_id.startswith("j-") and out["state"] == "WAITING"

    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["Name"] == "classeg"
    assert cluster["ReleaseLabel"] == "emr-7.13.0"
    assert cluster["LogUri"] == "s3://classeg-test/logs/"
    assert {app["Name"] for app in cluster["Applications"]} >= {"Hadoop", "Spark"}
    groups = {g["InstanceGroupType"]: g for g in emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]}
    assert (groups["CORE"]["InstanceType"], groups["CORE"]["RequestedInstanceCount"]) == ("g5.xlarge", 2)
    [bootstrap] = emr.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"]
    assert bootstrap["ScriptPath"] == "s3://classeg-test/wheelhouse/bootstrap.sh"
    assert bootstrap["Args"] == ["--wheelhouse", "s3://classeg-test/wheelhouse", "--venv", "/opt/classeg/venv",
                                 "--gpu-cgroup"]
    spark_defaults = next(c for c in cluster["Configurations"] if c["Classification"] == "spark-defaults")
    assert spark_defaults["Properties"]["spark.dynamicAllocation.enabled"] == "false"

    code, out, _ = run_cli(capsys, "emr", "submit", "--cluster-id", cluster_id, "--job", "train", *overrides,
                           "--", "--epochs", "3", "--scans", "s3://classeg-test/scans")
    assert code == 0
    step_id = out["step_id"]
    assert out["step_log"] == f"s3://classeg-test/logs/{cluster_id}/steps/{step_id}/stderr.gz"
    step = emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]
    assert step["Name"] == "classeg train"
    assert step["Config"]["Jar"] == "command-runner.jar"
    assert step["Config"]["Args"][:3] == ["spark-submit", "--deploy-mode", "cluster"]
    assert step["Config"]["Args"][-4:] == ["--epochs", "3", "--scans", "s3://classeg-test/scans"]

    # moto leaves steps RUNNING forever: `wait` gives up, exits 1 and says where the logs will be.
    code, out, err = run_cli(capsys, "emr", "wait", "--cluster-id", cluster_id, "--step-id", step_id,
                             "--poll-seconds", "1", "--timeout-minutes", "0.04", *overrides)
    assert code == 1 and out is None
    assert f"step {step_id} (classeg train) on cluster {cluster_id} is still RUNNING" in err
    assert f"s3://classeg-test/logs/{cluster_id}/steps/{step_id}/stderr.gz" in err

    code, out, _ = run_cli(capsys, "emr", "down", "--cluster-id", cluster_id, *overrides)
    assert code == 0 and out == {"terminating": [cluster_id]}
    assert emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"] == "TERMINATED"


def test_wait_for_step_raises_step_failed(emr_moto):
    cfg = load_config(overrides=[f"emr.endpoint_url={emr_moto}"])
    emr = client(emr_moto, "emr")
    cluster_id = emr.run_job_flow(Name="plain", ReleaseLabel="emr-7.13.0", LogUri="s3n://logs/x/",
                                  Instances={"MasterInstanceType": "m5.xlarge", "SlaveInstanceType": "m5.xlarge",
                                             "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True})["JobFlowId"]
    step_id = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[{
        "Name": "noop", "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["true"]}}])["StepIds"][0]
    with pytest.raises(aws.StepFailed, match=f"s3://logs/x/{cluster_id}/steps/{step_id}/stderr.gz"):
        aws.wait_for_step(cfg, cluster_id, step_id, delay=1, max_attempts=1)
    with pytest.raises(aws.AwsError, match="DescribeStep failed"):
        aws.wait_for_step(cfg, "j-DOESNOTEXIST", "s-NOPE", delay=1, max_attempts=1)


def test_submit_to_unknown_cluster_fails_cleanly(emr_moto, overrides, capsys):
    code, out, err = run_cli(capsys, "emr", "submit", "--cluster-id", "j-NOSUCHCLUSTER", "--job", "score",
                             *overrides, "--", "--full")
    assert code == 1 and out is None
    assert "emr AddJobFlowSteps failed" in err


def test_schedule_creates_then_updates(emr_moto, overrides, capsys):
    sfn, scheduler = client(emr_moto, "stepfunctions"), client(emr_moto, "scheduler")
    flags = ["--archive", "s3://archive/scans", "--classifier", "s3://models/classifier", "--segmenter",
             "s3://models/segmenter", "--output", "s3://results/scores"]
    code, out, _ = run_cli(capsys, "emr", "schedule", "--cron", "cron(0 2 * * ? *)", *flags, *overrides)
    assert code == 0
    assert (out["state_machine"], out["schedule"]) == ("created", "created")
    machine_arn = out["state_machine_arn"]
    assert machine_arn == "arn:aws:states:us-east-1:123456789012:stateMachine:classeg-scoring"

    machine = sfn.describe_state_machine(stateMachineArn=machine_arn)
    assert machine["roleArn"] == SFN_ROLE
    definition = json.loads(machine["definition"])
    assert definition["StartAt"] == "CreateCluster"
    args = definition["States"]["Score"]["Parameters"]["Step"]["HadoopJarStep"]["Args"]
    assert args[-8:] == flags
    schedule = scheduler.get_schedule(Name="classeg-scoring")
    assert schedule["ScheduleExpression"] == "cron(0 2 * * ? *)"
    assert schedule["Target"]["Arn"] == machine_arn
    assert schedule["Target"]["RoleArn"] == SCHEDULER_ROLE
    assert schedule["State"] == "ENABLED"

    # Rerunning replaces the schedule and the definition instead of failing on the existing names.
    code, out, _ = run_cli(capsys, "emr", "schedule", "--cron", "cron(30 3 ? * MON *)", *flags[:6], "--output",
                           "s3://results/scores-v2", *overrides)
    assert code == 0
    assert (out["state_machine"], out["schedule"]) == ("updated", "updated")
    assert scheduler.get_schedule(Name="classeg-scoring")["ScheduleExpression"] == "cron(30 3 ? * MON *)"
    args = json.loads(sfn.describe_state_machine(stateMachineArn=machine_arn)["definition"])[
        "States"]["Score"]["Parameters"]["Step"]["HadoopJarStep"]["Args"]
    assert args[-2:] == ["--output", "s3://results/scores-v2"]
    assert len([m for m in sfn.list_state_machines()["stateMachines"] if m["name"] == "classeg-scoring"]) == 1


KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
CERTS = "s3://classeg-test/certs.zip"


def test_up_creates_then_reuses_the_security_configuration(emr_moto, overrides, capsys):
    emr = client(emr_moto, "emr")
    secured = [*overrides, "--set", f"emr.kms_key_arn={KMS_KEY}", "--set", f"emr.tls_certificates={CERTS}"]
    code, first, _ = run_cli(capsys, "emr", "up", *secured)
    assert code == 0
    name = first["security_configuration"]["name"]
    assert first["security_configuration"] == {"name": name, "action": "created"}
    assert name.startswith("classeg-")
    assert emr.describe_cluster(ClusterId=first["cluster_id"])["Cluster"]["SecurityConfiguration"] == name
    stored = json.loads(emr.describe_security_configuration(Name=name)["SecurityConfiguration"])
    encryption = stored["EncryptionConfiguration"]
    assert (encryption["EnableAtRestEncryption"], encryption["EnableInTransitEncryption"]) == (True, True)
    assert encryption["AtRestEncryptionConfiguration"]["S3EncryptionConfiguration"] == {
        "EncryptionMode": "SSE-KMS", "AwsKmsKey": KMS_KEY}
    assert encryption["InTransitEncryptionConfiguration"]["TLSCertificateConfiguration"] == {
        "CertificateProviderType": "PEM", "S3Object": CERTS}

    # A rerun with the same settings finds the same name and creates nothing.
    code, second, _ = run_cli(capsys, "emr", "up", *secured)
    assert code == 0
    assert second["security_configuration"] == {"name": name, "action": "reused"}
    assert emr.describe_cluster(ClusterId=second["cluster_id"])["Cluster"]["SecurityConfiguration"] == name

    # One named by emr.security_configuration is used as it is, and must exist.
    code, given, _ = run_cli(capsys, "emr", "up", *overrides, "--set", f"emr.security_configuration={name}")
    assert code == 0 and given["security_configuration"] == {"name": name, "action": "given"}
    code, out, err = run_cli(capsys, "emr", "up", *overrides, "--set", "emr.security_configuration=no-such-config")
    assert code == 1 and out is None
    assert "emr DescribeSecurityConfiguration failed" in err and "no-such-config" in err
    emr.terminate_job_flows(JobFlowIds=[first["cluster_id"], second["cluster_id"], given["cluster_id"]])

    # Scheduled scoring clusters get it too.
    code, out, _ = run_cli(capsys, "emr", "schedule", "--cron", "rate(1 day)", "--name", "classeg-secure-scoring",
                           "--archive", "s3://archive/scans", "--classifier", "s3://models/classifier",
                           "--output", "s3://results/scores", *secured)
    assert code == 0
    definition = json.loads(client(emr_moto, "stepfunctions").describe_state_machine(
        stateMachineArn=out["state_machine_arn"])["definition"])
    assert definition["States"]["CreateCluster"]["Parameters"]["SecurityConfiguration"] == name
