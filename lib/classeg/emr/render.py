"""EMR, Step Functions and EventBridge Scheduler requests rendered from the templates in ``emr/templates/``.

The templates are data (YAML with comments saying why each setting is there); this module fills them from the
config and checks every request against botocore's service model, offline, before anything is sent:

- ``"${name}"`` as a whole value becomes the value with its type; a ``None`` value drops the key (or list item),
- ``"${name}"`` inside a longer string becomes its text (``true``/``false`` for booleans),
- ``"${*name}"`` as a list item splices a list in (the user's job flags).

Everything here is pure: no network, no clients. ``classeg.emr.aws`` sends what this module builds.
"""
from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from classeg import __version__
from classeg.config import Config

# lib/classeg/emr/templates is a symlink to the repository's emr/templates.
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"

JOBS = ("ingest", "train", "score", "evaluate")
ACTIONS_ON_FAILURE = ("CONTINUE", "CANCEL_AND_WAIT", "TERMINATE_CLUSTER")


@dataclass(frozen=True)
class InstanceType:
    vcpus: int
    memory_gib: int
    gpus: int
    gpu: str = ""


# EC2 instance types a classeg cluster is expected to use (AWS instance type specs). Core nodes must have GPUs.
INSTANCE_TYPES: dict[str, InstanceType] = {
    "m5.xlarge": InstanceType(4, 16, 0),
    "m5.2xlarge": InstanceType(8, 32, 0),
    "m5.4xlarge": InstanceType(16, 64, 0),
    "m6i.xlarge": InstanceType(4, 16, 0),
    "m6i.2xlarge": InstanceType(8, 32, 0),
    "m7i.xlarge": InstanceType(4, 16, 0),
    "m7i.2xlarge": InstanceType(8, 32, 0),
    "g4dn.xlarge": InstanceType(4, 16, 1, "T4"),
    "g4dn.2xlarge": InstanceType(8, 32, 1, "T4"),
    "g4dn.4xlarge": InstanceType(16, 64, 1, "T4"),
    "g4dn.12xlarge": InstanceType(48, 192, 4, "T4"),
    "g5.xlarge": InstanceType(4, 16, 1, "A10G"),
    "g5.2xlarge": InstanceType(8, 32, 1, "A10G"),
    "g5.4xlarge": InstanceType(16, 64, 1, "A10G"),
    "g5.8xlarge": InstanceType(32, 128, 1, "A10G"),
    "g5.12xlarge": InstanceType(48, 192, 4, "A10G"),
    "g5.16xlarge": InstanceType(64, 256, 1, "A10G"),
    "g5.24xlarge": InstanceType(96, 384, 4, "A10G"),
    "g5.48xlarge": InstanceType(192, 768, 8, "A10G"),
    "g6.xlarge": InstanceType(4, 16, 1, "L4"),
    "g6.2xlarge": InstanceType(8, 32, 1, "L4"),
    "g6.4xlarge": InstanceType(16, 64, 1, "L4"),
    "g6.8xlarge": InstanceType(32, 128, 1, "L4"),
    "g6.12xlarge": InstanceType(48, 192, 4, "L4"),
    "g6.16xlarge": InstanceType(64, 256, 1, "L4"),
    "g6.24xlarge": InstanceType(96, 384, 4, "L4"),
    "g6.48xlarge": InstanceType(192, 768, 8, "L4"),
}

_WHOLE = re.compile(r"^\$\{(\*?)([A-Za-z_][A-Za-z0-9_]*)\}$")
_INLINE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DROP = object()


@dataclass(frozen=True)
class ApiRequest:
    """One AWS API call: ``service`` (botocore name), ``operation`` (API name, e.g. ``RunJobFlow``), ``params``."""

    service: str
    operation: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "operation": self.operation, "params": self.params}


# --- templates ------------------------------------------------------------------------------------------------


def load_template(name: str) -> Any:
    """The parsed template ``emr/templates/<name>.yaml``; FileNotFoundError names the folder searched."""
    path = TEMPLATE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"EMR template {path} not found: classeg's EMR commands need a source checkout "
                                "(emr/templates/) or a package built with the templates")
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _text(value: Any, name: str, template: str) -> str:
    if value is None:
        raise ValueError(f"template {template}: ${{{name}}} is used inside a string but has no value")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(node: Any, values: Mapping[str, Any], *, template: str = "template") -> Any:
    """Fill the placeholders of a parsed template (see the module docstring) and return the new structure."""

    def lookup(name: str) -> Any:
        if name not in values:
            raise ValueError(f"template {template}: no value for ${{{name}}}; known: {sorted(values)}")
        return values[name]

    def walk(item: Any) -> Any:
        if isinstance(item, dict):
            out = {}
            for key, sub in item.items():
                rendered = walk(sub)
                if rendered is not _DROP:
                    out[key] = rendered
            return out
        if isinstance(item, list):
            out_list: list[Any] = []
            for sub in item:
                whole = _WHOLE.match(sub) if isinstance(sub, str) else None
                if whole and whole.group(1):
                    spliced = lookup(whole.group(2))
                    if not isinstance(spliced, (list, tuple)):
                        raise ValueError(f"template {template}: ${{*{whole.group(2)}}} needs a list, "
                                         f"got {spliced!r}")
                    out_list.extend(spliced)
                    continue
                rendered = walk(sub)
                if rendered is not _DROP:
                    out_list.append(rendered)
            return out_list
        if isinstance(item, str):
            whole = _WHOLE.match(item)
            if whole and not whole.group(1):
                value = lookup(whole.group(2))
                return _DROP if value is None else value
            return _INLINE.sub(lambda m: _text(lookup(m.group(1)), m.group(1), template), item)
        return item

    return walk(node)


def _stringify_properties(node: Any) -> Any:
    """EMR configuration ``Properties`` are string maps: render ``4`` as ``"4"`` and ``True`` as ``"true"``."""
    if isinstance(node, list):
        return [_stringify_properties(item) for item in node]
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "Properties" and isinstance(value, dict):
                out[key] = {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in value.items()}
            else:
                out[key] = _stringify_properties(value)
        return out
    return node


# --- validation -----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def service_model(service: str):
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


def validate(request: ApiRequest) -> ApiRequest:
    """Check ``request`` against botocore's model of the operation (types, required members, enums' shapes).

    Offline. Raises ValueError naming the operation and every problem botocore found.
    """
    from botocore.exceptions import ParamValidationError
    from botocore.validate import validate_parameters

    model = service_model(request.service)
    if request.operation not in model.operation_names:
        raise ValueError(f"{request.service} has no operation {request.operation!r}")
    try:
        validate_parameters(request.params, model.operation_model(request.operation).input_shape)
    except ParamValidationError as err:
        raise ValueError(f"{request.service} {request.operation} request is invalid: {err}") from err
    return request


def check_state_machine(definition: Mapping[str, Any]) -> None:
    """Structural checks of an Amazon States Language definition: StartAt and every Next/Catch target exist,
    every Task/Pass state either ends or goes on, and every state can be reached. Raises ValueError."""
    states = definition.get("States")
    if not isinstance(states, dict) or not states:
        raise ValueError("state machine has no States")
    start = definition.get("StartAt")
    if start not in states:
        raise ValueError(f"StartAt {start!r} is not a state; states: {sorted(states)}")
    edges: dict[str, list[str]] = {}
    for name, state in states.items():
        kind = state.get("Type")
        targets = [state["Next"]] if "Next" in state else []
        targets += [catch["Next"] for catch in state.get("Catch", [])]
        for target in targets:
            if target not in states:
                raise ValueError(f"state {name!r} goes to unknown state {target!r}")
        if kind in ("Task", "Pass", "Wait", "Parallel", "Map") and ("Next" in state) == bool(state.get("End")):
            raise ValueError(f"state {name!r} must have exactly one of Next and End")
        if kind not in ("Task", "Pass", "Wait", "Parallel", "Map", "Choice", "Succeed", "Fail"):
            raise ValueError(f"state {name!r} has unknown Type {kind!r}")
        edges[name] = targets
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(edges[name])
    if seen != set(states):
        raise ValueError(f"states never reached: {sorted(set(states) - seen)}")


# --- values from config ---------------------------------------------------------------------------------------


def _require_s3(value: str | None, key: str, why: str) -> str:
    if not value:
        raise ValueError(f"{key} is not set: {why} (e.g. --set {key}=s3://my-bucket/classeg/...)")
    if not str(value).startswith("s3://"):
        raise ValueError(f"{key} must be an s3:// URI ({why}), got {value!r}")
    return str(value).rstrip("/")


def venv_of(python: str) -> str:
    """The virtualenv directory of ``emr.python`` (``/opt/classeg/venv/bin/python`` -> ``/opt/classeg/venv``)."""
    path = PurePosixPath(python)
    if not path.is_absolute() or path.parent.name != "bin":
        raise ValueError(f"emr.python must be an absolute path ending in bin/python..., got {python!r}")
    return str(path.parent.parent)


def core_instance(cfg: Config) -> InstanceType | None:
    """The core instance type's specs, checked against ``emr.gpus_per_node``; None for a type not in the table."""
    emr = cfg.emr
    spec = INSTANCE_TYPES.get(emr.core_instance_type)
    if emr.gpus_per_node < 1:
        raise ValueError(f"emr.gpus_per_node must be at least 1, got {emr.gpus_per_node!r}")
    if emr.core_instance_count < 1:
        raise ValueError(f"emr.core_instance_count must be at least 1, got {emr.core_instance_count!r}")
    if spec is not None:
        if spec.gpus == 0:
            gpu_types = sorted(name for name, s in INSTANCE_TYPES.items() if s.gpus)
            raise ValueError(f"emr.core_instance_type must be a GPU instance type such as {gpu_types[:6]}, "
                             f"got {emr.core_instance_type!r} (no GPU)")
        if emr.gpus_per_node > spec.gpus:
            raise ValueError(f"emr.gpus_per_node is {emr.gpus_per_node} but {emr.core_instance_type} has "
                             f"{spec.gpus} GPU(s)")
    return spec


def tasks_per_gpu(cfg: Config) -> int:
    """Concurrent CPU-bound tasks (ingest, scoring, evaluation) sharing one GPU: ``emr.tasks_per_gpu``, or the
    core type's vCPUs per GPU so that every core is busy."""
    configured = cfg.emr.tasks_per_gpu
    if configured < 0:
        raise ValueError(f"emr.tasks_per_gpu must be 0 (derive) or positive, got {configured!r}")
    if configured:
        return configured
    spec = core_instance(cfg)
    if spec is None:
        raise ValueError(f"emr.core_instance_type {cfg.emr.core_instance_type!r} is not in classeg's instance "
                         "table: set emr.tasks_per_gpu (usually vCPUs / GPUs of that type)")
    return max(1, spec.vcpus // cfg.emr.gpus_per_node)


def task_gpu_amount(cfg: Config, job: str) -> str:
    """``spark.task.resource.gpu.amount`` for ``job``: one GPU per training process, a share otherwise.

    Written with full float precision: Spark derives tasks per GPU as ``int(1 / amount)``, so a rounded-up
    decimal (0.166667 for 1/6) would lose a task slot.
    """
    if job == "train":
        return "1"
    share = tasks_per_gpu(cfg)
    return "1" if share == 1 else repr(1 / share)


def cluster_request(cfg: Config, *, name: str | None = None,
                    security_configuration: str | None = None) -> dict[str, Any]:
    """RunJobFlow parameters for a GPU cluster from the ``emr:`` and ``spark:`` config sections, with the named
    EMR security configuration (``classeg.emr.security.plan``) when one is given."""
    emr = cfg.emr
    wheelhouse = _require_s3(emr.wheelhouse, "emr.wheelhouse", "every node installs classeg from it")
    log_uri = _require_s3(emr.log_uri, "emr.log_uri", "cluster and step logs go there")
    core_instance(cfg)
    bootstrap_uri = emr.bootstrap_uri or f"{wheelhouse}/bootstrap.sh"
    _require_s3(bootstrap_uri, "emr.bootstrap_uri", "EMR runs bootstrap actions from S3")
    if emr.idle_timeout_minutes < 0:
        raise ValueError(f"emr.idle_timeout_minutes must be 0 (never) or positive, got {emr.idle_timeout_minutes!r}")
    tags = {"classeg:version": __version__}
    tags.update({str(k): str(v) for k, v in (cfg["emr.tags"] or {}).items()})
    values = {
        "cluster_name": name or emr.cluster_name,
        "release_label": emr.release_label,
        "log_uri": f"{log_uri}/",
        "log_encryption_key": emr.kms_key_arn,
        "service_role": emr.service_role,
        "instance_profile": emr.instance_profile,
        "master_instance_type": emr.master_instance_type,
        "core_instance_type": emr.core_instance_type,
        "core_instance_count": emr.core_instance_count,
        "core_market": "SPOT" if emr.bid_price is not None else "ON_DEMAND",
        "bid_price": None if emr.bid_price is None else str(emr.bid_price),
        "subnet_id": emr.subnet_id,
        "key_name": emr.key_name,
        "auto_termination_policy": ({"IdleTimeout": emr.idle_timeout_minutes * 60}
                                    if emr.idle_timeout_minutes else None),
        "bootstrap_uri": bootstrap_uri,
        "wheelhouse": wheelhouse,
        "venv": venv_of(emr.python),
        "python": emr.python,
        "gpus_per_node": emr.gpus_per_node,
        "arrow_batch_size": cfg.spark.arrow_batch_size,
        "python_worker_reuse": cfg.spark.python_worker_reuse,
        "tags": [{"Key": key, "Value": value} for key, value in tags.items()],
        "security_configuration": security_configuration,
    }
    request = _stringify_properties(render(load_template("cluster"), values, template="cluster.yaml"))
    validate(ApiRequest("emr", "RunJobFlow", request))
    return request


def step(cfg: Config, job: str, job_args: Sequence[str], *, action_on_failure: str = "CONTINUE") -> dict[str, Any]:
    """One ``spark-submit --deploy-mode cluster`` step running ``jobs/<job>.py`` from the wheelhouse with
    ``job_args`` (the job's own flags, passed through verbatim)."""
    if job not in JOBS:
        raise ValueError(f"job must be one of {list(JOBS)}, got {job!r}")
    if action_on_failure not in ACTIONS_ON_FAILURE:
        raise ValueError(f"action_on_failure must be one of {list(ACTIONS_ON_FAILURE)}, got {action_on_failure!r}")
    args = [str(arg) for arg in job_args]
    wheelhouse = _require_s3(cfg.emr.wheelhouse, "emr.wheelhouse", "steps run the job scripts uploaded there")
    values = {
        "job": job,
        "action_on_failure": action_on_failure,
        "task_gpu_amount": task_gpu_amount(cfg, job),
        "conf_uri": f"{wheelhouse}/conf/emr.yaml",
        "job_script": f"{wheelhouse}/jobs/{job}.py",
        "job_args": args,
    }
    return render(load_template("step"), values, template="step.yaml")


def add_steps_request(cfg: Config, cluster_id: str, job: str, job_args: Sequence[str]) -> ApiRequest:
    """AddJobFlowSteps request for one job step on ``cluster_id``."""
    if not cluster_id or not str(cluster_id).startswith("j-"):
        raise ValueError(f"cluster id must look like j-XXXXXXXXXXXX, got {cluster_id!r}")
    return validate(ApiRequest("emr", "AddJobFlowSteps",
                               {"JobFlowId": cluster_id, "Steps": [step(cfg, job, job_args)]}))


def scoring_args(*, archive: str, classifier: str, output: str, segmenter: str | None = None) -> list[str]:
    """Flags of the incremental scoring job; every location must be in S3, where the cluster can read it."""
    locations = {"--archive": archive, "--classifier": classifier, "--segmenter": segmenter, "--output": output}
    args: list[str] = []
    for flag, uri in locations.items():
        if uri is None and flag == "--segmenter":
            continue
        _require_s3(uri, flag, "the scheduled cluster reads and writes S3")
        args += [flag, str(uri)]
    return args


def account_of(role_arn: str, key: str) -> str:
    """The account id in an IAM role ARN (``arn:aws:iam::123456789012:role/name``)."""
    match = re.fullmatch(r"arn:aws[a-z-]*:iam::(\d{12}):role/.+", role_arn or "")
    if not match:
        raise ValueError(f"{key} must be an IAM role ARN like arn:aws:iam::123456789012:role/name, got {role_arn!r}")
    return match.group(1)


_SCHEDULE_EXPRESSION = re.compile(r"^(cron|rate|at)\((.+)\)$")


def check_schedule_expression(expression: str) -> str:
    """Accept EventBridge Scheduler ``cron(m h dom mon dow year)``, ``rate(n unit)`` and ``at(...)``."""
    match = _SCHEDULE_EXPRESSION.match(expression or "")
    if not match:
        raise ValueError(f"--cron must be cron(minutes hours day-of-month month day-of-week year), rate(...) or "
                         f"at(...), e.g. 'cron(0 2 * * ? *)', got {expression!r}")
    if match.group(1) == "cron":
        fields = match.group(2).split()
        if len(fields) != 6:
            raise ValueError(f"a cron expression has 6 fields (minutes hours day-of-month month day-of-week year), "
                             f"got {len(fields)} in {expression!r}")
        if "?" not in (fields[2], fields[4]):
            raise ValueError(f"cron needs '?' in day-of-month or day-of-week (EventBridge rule), got {expression!r}")
    return expression


def scoring_state_machine(cfg: Config, *, archive: str, classifier: str, output: str,
                          segmenter: str | None = None, security_configuration: str | None = None) -> dict[str, Any]:
    """The ASL definition (a dict; JSON-encode it for CreateStateMachine) of one scheduled scoring run; its
    clusters get the named EMR security configuration when one is given."""
    cluster = cluster_request(cfg, name=f"{cfg.emr.cluster_name}-scheduled-scoring",
                              security_configuration=security_configuration)
    score_step = step(cfg, "score", scoring_args(archive=archive, classifier=classifier, segmenter=segmenter,
                                                  output=output))
    # The addStep task takes the same Step shape as AddJobFlowSteps; check it with that model.
    validate(ApiRequest("emr", "AddJobFlowSteps", {"JobFlowId": "j-SCHEDULED", "Steps": [score_step]}))
    values = {
        "comment": f"classeg {__version__} scheduled bulk scoring of {archive} into {output}: create a GPU "
                   "cluster, score new scans, terminate the cluster (also on failure)",
        "cluster": cluster,
        "step": score_step,
    }
    definition = render(load_template("scoring-state-machine"), values, template="scoring-state-machine.yaml")
    check_state_machine(definition)
    return definition


def state_machine_request(cfg: Config, definition: Mapping[str, Any]) -> ApiRequest:
    """CreateStateMachine request for the scoring definition."""
    role = cfg.emr.state_machine_role_arn
    account_of(role, "emr.state_machine_role_arn")
    tags = [{"key": "classeg:version", "value": __version__}]
    return validate(ApiRequest("stepfunctions", "CreateStateMachine", {
        "name": cfg.emr.schedule_name,
        "definition": json.dumps(definition, indent=2),
        "roleArn": role,
        "type": "STANDARD",
        "tags": tags,
    }))


def state_machine_arn(cfg: Config) -> str:
    """The ARN CreateStateMachine will return (region, the role's account, the name): for dry runs."""
    account = account_of(cfg.emr.state_machine_role_arn, "emr.state_machine_role_arn")
    return f"arn:aws:states:{cfg.emr.region}:{account}:stateMachine:{cfg.emr.schedule_name}"


def schedule_request(cfg: Config, *, expression: str, target_arn: str, archive: str, output: str) -> ApiRequest:
    """CreateSchedule request that starts ``target_arn`` (the state machine) on ``expression``."""
    check_schedule_expression(expression)
    account_of(cfg.emr.scheduler_role_arn, "emr.scheduler_role_arn")
    values = {
        "name": cfg.emr.schedule_name,
        "description": f"classeg scoring of {archive} into {output}"[:512],
        "schedule_expression": expression,
        "state_machine_arn": target_arn,
        "role_arn": cfg.emr.scheduler_role_arn,
        "input": "{}",
    }
    return validate(ApiRequest("scheduler", "CreateSchedule",
                               render(load_template("schedule"), values, template="schedule.yaml")))
