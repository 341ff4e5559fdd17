"""Sending rendered requests with boto3: clients from config, step waiting, and where a failed step's logs are.

Endpoints come from config: ``s3.endpoint_url`` for S3, ``emr.endpoint_url`` for EMR, Step Functions and
EventBridge Scheduler (any S3/EMR-compatible server, e.g. moto on 127.0.0.1 in the tests). Credentials come from
the usual boto3 chain (environment, profile, instance role).
"""
from __future__ import annotations

import logging
from typing import Any

from classeg.config import Config
from classeg.emr.render import ApiRequest, validate

log = logging.getLogger(__name__)

# Step logs EMR copies to LogUri (about five minutes after the step ends).
STEP_LOG_FILES = ("stderr.gz", "stdout.gz", "controller.gz", "syslog.gz")


class AwsError(RuntimeError):
    """An AWS API call failed; the message names the operation and AWS's error."""


class StepFailed(RuntimeError):
    """An EMR step ended FAILED or CANCELLED, or did not finish in time; the message says where its logs are."""


def client(cfg: Config, service: str):
    """A boto3 client for ``service`` in ``emr.region`` (``s3.region`` for S3) with the configured endpoint.

    Not :func:`classeg.io.s3.client` for S3: wheelhouse uploads are boto3 managed transfers, which rely on
    botocore's own retries (off in that factory). It sends the same encryption and expected bucket owner
    (:func:`classeg.io.s3.add_request_args`)."""
    import boto3
    from botocore.config import Config as BotoConfig

    if service == "s3":
        region, endpoint = cfg.s3.region, cfg.s3.endpoint_url
    else:
        region, endpoint = cfg.emr.region, cfg.emr.endpoint_url
    boto_config = BotoConfig(retries={"max_attempts": 5, "mode": "standard"},
                             connect_timeout=cfg.s3.connect_timeout, read_timeout=cfg.s3.read_timeout)
    made = boto3.session.Session().client(service, region_name=region, endpoint_url=endpoint, config=boto_config)
    if service == "s3":
        from classeg.io import s3 as s3io

        made = s3io.add_request_args(made, s3io.S3Settings.of(cfg))
    return made


def send(cfg: Config, request: ApiRequest, *, clients: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``request`` and call it; returns the response without ``ResponseMetadata``.

    Raises AwsError (from the botocore error) naming the operation when AWS or the connection fails.
    """
    from botocore import xform_name
    from botocore.exceptions import BotoCoreError, ClientError

    validate(request)
    clients = {} if clients is None else clients
    if request.service not in clients:
        clients[request.service] = client(cfg, request.service)
    method = getattr(clients[request.service], xform_name(request.operation))
    log.info("%s %s", request.service, request.operation)
    try:
        response = method(**request.params)
    except ClientError as err:
        raise AwsError(f"{request.service} {request.operation} failed: {err}") from err
    except BotoCoreError as err:
        raise AwsError(f"{request.service} {request.operation} failed: {err}") from err
    response.pop("ResponseMetadata", None)
    return response


def error_code(err: BaseException) -> str | None:
    """The AWS error code behind an AwsError (``ConflictException``...), or None."""
    cause = err.__cause__
    response = getattr(cause, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def step_log_location(log_uri: str | None, cluster_id: str, step_id: str, name: str = "stderr.gz") -> str | None:
    """``<LogUri>/<cluster-id>/steps/<step-id>/<name>``, where EMR puts a step's logs; None without a LogUri.

    EMR reports LogUri as ``s3n://...``; the result uses ``s3://`` so it can be pasted into ``aws s3 cp``.
    """
    if not log_uri:
        return None
    return f"{_s3(log_uri).rstrip('/')}/{cluster_id}/steps/{step_id}/{name}"


def _s3(uri: str) -> str:
    for scheme in ("s3n://", "s3a://"):
        if uri.startswith(scheme):
            return "s3://" + uri[len(scheme):]
    return uri


def step_failure_message(step: dict[str, Any], *, cluster_id: str, log_uri: str | None,
                         waited_seconds: float | None = None) -> str:
    """What went wrong with a step, from a DescribeStep ``Step``, and where to read its logs."""
    status = step.get("Status", {})
    state = status.get("State", "UNKNOWN")
    step_id = step.get("Id", "?")
    name = step.get("Name", "")
    if state in ("FAILED", "CANCELLED", "INTERRUPTED"):
        head = f"step {step_id} ({name}) on cluster {cluster_id} ended {state}"
    else:
        waited = f" after {waited_seconds:.0f} s" if waited_seconds is not None else ""
        head = f"step {step_id} ({name}) on cluster {cluster_id} is still {state}{waited}: gave up waiting"
    parts = [head]
    details = status.get("FailureDetails") or {}
    failure = " ".join(text for text in (details.get("Reason"), details.get("Message")) if text)
    if failure:
        parts.append(f"reason: {failure}")
    reason = (status.get("StateChangeReason") or {}).get("Message")
    if reason:
        parts.append(f"state change: {reason}")
    location = step_log_location(log_uri, cluster_id, step_id)
    if location:
        parts.append(f"step log: {location}")
        parts.append(f"Spark driver and executor logs: {_s3(log_uri).rstrip('/')}/{cluster_id}/containers/")
    else:
        parts.append("the cluster has no LogUri, so its step logs were not kept")
    if details.get("LogFile"):
        parts.append(f"EMR points at: {_s3(details['LogFile'])}")
    return "; ".join(parts)


def wait_for_step(cfg: Config, cluster_id: str, step_id: str, *, delay: int = 30,
                  max_attempts: int = 2880) -> dict[str, Any]:
    """Block until the step is COMPLETED (botocore's ``step_complete`` waiter, polling every ``delay`` s).

    Returns the DescribeStep ``Step``. Raises StepFailed with the step's log location when it ends FAILED or
    CANCELLED or is still running after ``delay * max_attempts`` seconds; AwsError when AWS calls fail.
    """
    from botocore.exceptions import BotoCoreError, ClientError, WaiterError

    emr = client(cfg, "emr")
    describe = ApiRequest("emr", "DescribeStep", {"ClusterId": cluster_id, "StepId": step_id})
    validate(describe)
    try:
        emr.get_waiter("step_complete").wait(**describe.params,
                                             WaiterConfig={"Delay": delay, "MaxAttempts": max_attempts})
    except WaiterError as err:
        last = err.last_response if isinstance(err.last_response, dict) else {}
        if "Error" in last and "Step" not in last:
            raise AwsError(f"emr DescribeStep failed: {last['Error'].get('Code')}: "
                           f"{last['Error'].get('Message')}") from err
        step = last.get("Step") or send(cfg, describe, clients={"emr": emr})["Step"]
        log_uri = send(cfg, ApiRequest("emr", "DescribeCluster", {"ClusterId": cluster_id}),
                       clients={"emr": emr})["Cluster"].get("LogUri")
        raise StepFailed(step_failure_message(step, cluster_id=cluster_id, log_uri=log_uri,
                                              waited_seconds=delay * max_attempts)) from err
    except (ClientError, BotoCoreError) as err:
        raise AwsError(f"emr DescribeStep failed: {err}") from err
    return send(cfg, describe, clients={"emr": emr})["Step"]
