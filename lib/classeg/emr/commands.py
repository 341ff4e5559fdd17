"""``classeg emr ...``: build the wheelhouse, start and stop GPU clusters (with their security configuration),
submit and wait for job steps, schedule bulk scoring, and print the instance role's least-privilege policy. Each
action parses its flags, loads the config and calls ``render``/``security``/``aws``/``wheelhouse``; ``--dry-run``
prints the exact API requests (operation and parameters) instead of sending them.
"""
from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from classeg.config import Config
from classeg.emr import aws, render, security, wheelhouse

log = logging.getLogger(__name__)


def _job_failed(err: Exception) -> Exception:
    from classeg.errors import JobFailed  # the command layer's failure type: exit status 1 with the message

    return JobFailed(str(err))


def _command(function: Callable[[argparse.Namespace, Config], dict[str, Any]]):
    @functools.wraps(function)
    def run(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
        try:
            return function(args, cfg)
        except (aws.AwsError, aws.StepFailed, wheelhouse.WheelhouseError) as err:
            raise _job_failed(err) from err
    return run


def _dry(requests: list[render.ApiRequest], **extra: Any) -> dict[str, Any]:
    return {"dry_run": True, "requests": [request.to_dict() for request in requests], **extra}


# --- actions --------------------------------------------------------------------------------------------------


@_command
def run_wheelhouse(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    spec = wheelhouse.WheelhouseSpec.for_project(
        args.project, horovod_dir=Path(args.horovod_wheels) if args.horovod_wheels else None,
        pip_options=tuple(args.pip_option) or None)
    return wheelhouse.build(spec, args.output, s3_client_factory=lambda: aws.client(cfg, "s3"),
                            dry_run=args.dry_run)


# EMR's answer to DescribeSecurityConfiguration for a name it does not know. The code also covers other bad
# requests; those then fail again in CreateSecurityConfiguration, with EMR's message.
_SECURITY_CONFIGURATION_MISSING = "InvalidRequestException"


def _security_requests(plan: security.SecurityPlan | None) -> list[render.ApiRequest]:
    return [plan.create] if plan is not None and plan.create is not None else []


def _ensure_security_configuration(cfg: Config, plan: security.SecurityPlan | None,
                                   clients: dict[str, Any]) -> dict[str, str] | None:
    """Make sure the planned security configuration exists: the named one must, a rendered one is created
    unless a previous run created it (same name, same settings). Returns its name and what was done."""
    if plan is None:
        log.warning("the cluster gets no security configuration: EMR encrypts neither its local disks nor the "
                    "traffic between its nodes; set emr.kms_key_arn and emr.tls_certificates (docs/emr.md, "
                    "Security review)")
        return None
    describe = render.ApiRequest("emr", "DescribeSecurityConfiguration", {"Name": plan.name})
    if plan.create is None:
        aws.send(cfg, describe, clients=clients)  # fails here, naming it, if emr.security_configuration is wrong
        return {"name": plan.name, "action": "given"}
    try:
        stored = aws.send(cfg, describe, clients=clients)
    except aws.AwsError as err:
        if aws.error_code(err) != _SECURITY_CONFIGURATION_MISSING:
            raise
        aws.send(cfg, plan.create, clients=clients)
        log.info("security configuration %s created", plan.name)
        return {"name": plan.name, "action": "created"}
    if not plan.same_document(stored["SecurityConfiguration"]):
        raise aws.AwsError(f"security configuration {plan.name} exists with other settings than "
                           "emr.kms_key_arn/emr.tls_certificates give: delete it or set emr.security_configuration")
    return {"name": plan.name, "action": "reused"}


@_command
def run_up(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    plan = security.plan(cfg)
    request = render.ApiRequest("emr", "RunJobFlow", render.cluster_request(
        cfg, security_configuration=plan.name if plan else None))
    if args.dry_run:
        return _dry([*_security_requests(plan), request])
    clients: dict[str, Any] = {}
    secured = _ensure_security_configuration(cfg, plan, clients)
    response = aws.send(cfg, request, clients=clients)
    cluster_id = response["JobFlowId"]
    log.info("cluster %s starting (%s x %s); logs under %s", cluster_id, cfg.emr.core_instance_count,
             cfg.emr.core_instance_type, cfg.emr.log_uri)
    result = {"cluster_id": cluster_id, "cluster_arn": response.get("ClusterArn"), "security_configuration": secured}
    if args.wait:
        from botocore.exceptions import WaiterError

        emr = clients.get("emr") or aws.client(cfg, "emr")
        try:
            emr.get_waiter("cluster_running").wait(ClusterId=cluster_id,
                                                   WaiterConfig={"Delay": args.poll_seconds, "MaxAttempts": 120})
        except WaiterError as err:
            logs = f"{str(cfg.emr.log_uri).rstrip('/')}/{cluster_id}/node/"
            raise aws.AwsError(f"cluster {cluster_id} did not start: {err}; bootstrap logs (classeg-bootstrap "
                               f"output of every node) are under {logs}*/bootstrap-actions/1/") from err
        result["state"] = aws.send(cfg, render.ApiRequest("emr", "DescribeCluster", {"ClusterId": cluster_id}),
                                   clients={"emr": emr})["Cluster"]["Status"]["State"]
    return result


def _job_args(values: list[str]) -> list[str]:
    return values[1:] if values[:1] == ["--"] else values


@_command
def run_submit(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    request = render.add_steps_request(cfg, args.cluster_id, args.job, _job_args(args.job_args))
    if args.dry_run:
        return _dry([request])
    step_id = aws.send(cfg, request)["StepIds"][0]
    return {"cluster_id": args.cluster_id, "step_id": step_id, "job": args.job,
            "step_log": aws.step_log_location(cfg.emr.log_uri, args.cluster_id, step_id)}


@_command
def run_wait(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    if args.poll_seconds < 1 or args.timeout_minutes <= 0:
        raise ValueError(f"--poll-seconds and --timeout-minutes must be positive, got {args.poll_seconds} and "
                         f"{args.timeout_minutes}")
    max_attempts = max(1, int(args.timeout_minutes * 60 // args.poll_seconds))
    request = render.validate(render.ApiRequest("emr", "DescribeStep",
                                                {"ClusterId": args.cluster_id, "StepId": args.step_id}))
    if args.dry_run:
        return _dry([request], waiter={"name": "step_complete", "Delay": args.poll_seconds,
                                       "MaxAttempts": max_attempts})
    step = aws.wait_for_step(cfg, args.cluster_id, args.step_id, delay=args.poll_seconds, max_attempts=max_attempts)
    return {"cluster_id": args.cluster_id, "step_id": args.step_id, "name": step.get("Name"),
            "state": step["Status"]["State"]}


@_command
def run_down(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    request = render.validate(render.ApiRequest("emr", "TerminateJobFlows", {"JobFlowIds": list(args.cluster_id)}))
    if args.dry_run:
        return _dry([request])
    aws.send(cfg, request)
    return {"terminating": list(args.cluster_id)}


@_command
def run_schedule(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    render.check_schedule_expression(args.cron)
    plan = security.plan(cfg)
    definition = render.scoring_state_machine(cfg, archive=args.archive, classifier=args.classifier,
                                              segmenter=args.segmenter, output=args.output,
                                              security_configuration=plan.name if plan else None)
    machine = render.state_machine_request(cfg, definition)
    if args.dry_run:
        schedule = render.schedule_request(cfg, expression=args.cron, target_arn=render.state_machine_arn(cfg),
                                           archive=args.archive, output=args.output)
        return _dry([*_security_requests(plan), machine, schedule])
    clients: dict[str, Any] = {}
    # Every scheduled run's cluster names it, so it must exist before the first run.
    _ensure_security_configuration(cfg, plan, clients)
    # Describe first, then create or update: rerunning `schedule` replaces the definition and the expression.
    machine_arn = render.state_machine_arn(cfg)
    if _exists(cfg, render.ApiRequest("stepfunctions", "DescribeStateMachine", {"stateMachineArn": machine_arn}),
               "StateMachineDoesNotExist", clients):
        aws.send(cfg, render.ApiRequest("stepfunctions", "UpdateStateMachine", {
            "stateMachineArn": machine_arn, "definition": machine.params["definition"],
            "roleArn": machine.params["roleArn"]}), clients=clients)
        machine_action = "updated"
    else:
        machine_arn = aws.send(cfg, machine, clients=clients)["stateMachineArn"]
        machine_action = "created"
    schedule = render.schedule_request(cfg, expression=args.cron, target_arn=machine_arn, archive=args.archive,
                                       output=args.output)
    if _exists(cfg, render.ApiRequest("scheduler", "GetSchedule", {"Name": schedule.params["Name"]}),
               "ResourceNotFoundException", clients):
        schedule_arn = aws.send(cfg, _update_schedule_request(schedule), clients=clients)["ScheduleArn"]
        schedule_action = "updated"
    else:
        schedule_arn = aws.send(cfg, schedule, clients=clients)["ScheduleArn"]
        schedule_action = "created"
    log.info("state machine %s %s, schedule %s %s (%s)", machine_arn, machine_action, schedule_arn,
             schedule_action, args.cron)
    return {"state_machine_arn": machine_arn, "state_machine": machine_action, "schedule_arn": schedule_arn,
            "schedule": schedule_action, "expression": args.cron}


@_command
def run_policy(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    return security.instance_role_policy(cfg, read=args.read, write=args.write)


def _exists(cfg: Config, describe: render.ApiRequest, missing_code: str, clients: dict[str, Any]) -> bool:
    try:
        aws.send(cfg, describe, clients=clients)
    except aws.AwsError as err:
        if aws.error_code(err) == missing_code:
            return False
        raise
    return True


def _update_schedule_request(create: render.ApiRequest) -> render.ApiRequest:
    members = render.service_model("scheduler").operation_model("UpdateSchedule").input_shape.members
    return render.ApiRequest("scheduler", "UpdateSchedule",
                             {key: value for key, value in create.params.items() if key in members})


# --- parser ---------------------------------------------------------------------------------------------------


def _key(parser: argparse.ArgumentParser, flag: str, key: str, **kw: Any) -> None:
    """A flag that sets config key ``key`` (collected by classeg.cli like every other command's)."""
    parser.add_argument(flag, dest=f"cfg:{key}", default=None, **kw)


def _aws_flags(parser: argparse.ArgumentParser, *, cluster: bool = False) -> None:
    _key(parser, "--region", "emr.region", help="AWS region (default emr.region)")
    if cluster:
        _key(parser, "--wheelhouse", "emr.wheelhouse", help="s3:// wheelhouse built by `classeg emr wheelhouse`")
        _key(parser, "--log-uri", "emr.log_uri", help="s3:// prefix for cluster and step logs")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the exact API requests (operation and JSON parameters) and send nothing")


def add_cli(subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``classeg emr ACTION`` to the ``classeg`` parser (``subparsers`` from ``add_subparsers``); ``common``
    adds --conf/--set/--log-level to each action's parser."""
    parser = subparsers.add_parser(
        "emr", help="run on AWS EMR: wheelhouse, cluster up/down, job steps, scheduled scoring",
        description="Deploy classeg on AWS EMR GPU clusters. Config: the emr: section (conf/emr.yaml overlays it).")
    actions = parser.add_subparsers(dest="emr_command", required=True, metavar="ACTION")

    p = actions.add_parser("wheelhouse", help="build every wheel the nodes need and upload it with the bootstrap")
    p.add_argument("--output", required=True, help="s3://bucket/prefix (uploaded) or a local folder")
    p.add_argument("--project", default=None, help="classeg source checkout (default: the one running)")
    p.add_argument("--horovod-wheels", default=None, metavar="DIR",
                   help="folder with the prebuilt horovod-0.28.1 wheel (default PROJECT/.cache/wheels)")
    p.add_argument("--pip-option", action="append", default=[], metavar="OPTION",
                   help="extra `pip download` option, e.g. --pip-option=--index-url=https://mirror/simple")
    p.add_argument("--dry-run", action="store_true", help="list what would be built, downloaded and uploaded")
    common(p)
    p.set_defaults(run=run_wheelhouse)

    p = actions.add_parser("up", help="start a GPU cluster (RunJobFlow) and print its id")
    _aws_flags(p, cluster=True)
    _key(p, "--core-instance-type", "emr.core_instance_type", help="GPU instance type of the core nodes")
    _key(p, "--core-instance-count", "emr.core_instance_count", type=int, help="number of core nodes")
    p.add_argument("--wait", action="store_true", help="return once the cluster is ready for steps")
    p.add_argument("--poll-seconds", type=int, default=30, help="with --wait: seconds between checks")
    common(p)
    p.set_defaults(run=run_up)

    p = actions.add_parser("submit", help="add a job step: spark-submit --deploy-mode cluster jobs/JOB.py FLAGS",
                           usage="classeg emr submit --cluster-id ID --job JOB [options] -- [job flags]")
    p.add_argument("--cluster-id", required=True, help="j-... from `classeg emr up`")
    p.add_argument("--job", required=True, choices=render.JOBS)
    _aws_flags(p, cluster=False)
    _key(p, "--wheelhouse", "emr.wheelhouse", help="s3:// wheelhouse holding jobs/ and conf/emr.yaml")
    common(p)
    p.add_argument("job_args", nargs=argparse.REMAINDER,
                   help="after --: the job's own flags, passed through verbatim (e.g. -- --epochs 20)")
    p.set_defaults(run=run_submit)

    p = actions.add_parser("wait", help="wait for a step to finish; exit 1 with its log location if it fails")
    p.add_argument("--cluster-id", required=True)
    p.add_argument("--step-id", required=True, help="s-... from `classeg emr submit`")
    p.add_argument("--poll-seconds", type=int, default=30, help="seconds between checks (default 30)")
    p.add_argument("--timeout-minutes", type=float, default=24 * 60, help="give up after this long (default 1 day)")
    _aws_flags(p)
    common(p)
    p.set_defaults(run=run_wait)

    p = actions.add_parser("down", help="terminate clusters (TerminateJobFlows)")
    p.add_argument("--cluster-id", required=True, action="append", help="repeatable")
    _aws_flags(p)
    common(p)
    p.set_defaults(run=run_down)

    p = actions.add_parser("schedule", help="scheduled bulk scoring: Step Functions state machine + "
                                            "EventBridge Scheduler schedule")
    p.add_argument("--cron", required=True, help="schedule expression, e.g. 'cron(0 2 * * ? *)' (UTC)")
    p.add_argument("--archive", required=True, help="s3:// archive to score (only new scans are scored)")
    p.add_argument("--classifier", required=True, help="s3:// classifier artifact")
    p.add_argument("--segmenter", default=None, help="s3:// segmenter artifact (optional)")
    p.add_argument("--output", required=True, help="s3:// scores table root")
    _key(p, "--name", "emr.schedule_name", help="state machine and schedule name (default emr.schedule_name)")
    _aws_flags(p, cluster=True)
    common(p)
    p.set_defaults(run=run_schedule)

    p = actions.add_parser("policy", help="print a least-privilege IAM policy for the cluster's instance role",
                           description="The instance role's S3 and KMS permissions, derived from the s3:// "
                                       "locations in the config and emr.kms_key_arn (docs/emr.md, Security review).")
    p.add_argument("--read", action="append", default=[], metavar="S3_URI",
                   help="another location the jobs read (repeatable), e.g. a --scans given only to a step")
    p.add_argument("--write", action="append", default=[], metavar="S3_URI",
                   help="another location the jobs write (repeatable), e.g. an evaluate --output")
    _key(p, "--region", "emr.region", help="AWS region (its partition goes into the ARNs)")
    common(p)
    p.set_defaults(run=run_policy)
