"""What protects patient data on an EMR cluster: its security configuration and its instance role's policy.

- ``security_configuration``: the EMR security configuration JSON (``EncryptionConfiguration``) from the
  ``emr:`` section: at-rest encryption of EMRFS (S3) data with SSE-KMS and of local disks (instance store and
  EBS) with the same KMS key (``emr.kms_key_arn``), in-transit TLS with EMR's PEM certificate provider
  (``emr.tls_certificates``). ``plan`` names it and builds the CreateSecurityConfiguration request that
  ``classeg emr up`` sends unless ``emr.security_configuration`` names one that exists already.
- ``instance_role_policy``: a least-privilege IAM policy for the cluster's instance role, derived from the
  s3:// locations in the config (``READ_KEYS``, ``WRITE_KEYS``) and the KMS key.

Pure, like ``classeg.emr.render``: no network, no clients; every request is checked against botocore's models.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from classeg.config import Config
from classeg.emr.render import ApiRequest, validate
from classeg.sections import SECTIONS

_KMS_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+")
_S3_URI = re.compile(r"s3[an]?://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?")
_S3_SCHEMES = ("s3://", "s3a://", "s3n://")

# Config keys whose s3:// location the cluster's jobs only read: s3:GetObject, and s3:ListBucket under it.
READ_KEYS: dict[str, str] = {
    "emr.wheelhouse": "every node installs from it; steps run its job scripts and conf/emr.yaml",
    "emr.bootstrap_uri": "EMR runs the bootstrap action from it on every node",
    "emr.tls_certificates": "every node fetches its TLS certificates with the instance role",
    "ingest.input": "ingest reads the dataset",
    "train.scans": "training reads the scan table",
    "train.weights": "training starts from these weights",
    "score.archive": "scoring reads the scans",
    "score.classifier": "scoring loads the classifier artifact",
    "score.segmenter": "scoring loads the segmenter artifact",
    "score.patient_key_secret": "scoring reads the secret that keys patient_key",
}
# Config keys whose s3:// location the jobs write (and read back, replace and clean up): s3:PutObject,
# GetObject, DeleteObject and AbortMultipartUpload, and s3:ListBucket under it.
WRITE_KEYS: dict[str, str] = {
    "emr.log_uri": "EMR copies cluster and step logs there",
    "ingest.output": "ingest writes the scan table and its errors",
    "train.output": "training writes runs, checkpoints and model artifacts",
    "train.cache_dir": "the Petastorm cache of training",
    "score.output": "scoring writes scores, errors, series, the manifest and run markers",
}

READ_ACTIONS = ["s3:GetObject"]
# A failed multipart upload (large artifacts, checkpoints) is aborted by the writer; without
# AbortMultipartUpload its parts stay in the bucket.
WRITE_ACTIONS = ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:PutObject"]
KMS_ACTIONS = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"]
POLICY_VERSION = "2012-10-17"
POLICY_NAME = "classeg-data-access"
# IAM's quota on a role's inline policies, counted without whitespace.
INLINE_POLICY_MAX_CHARS = 10_240


# --- the security configuration -------------------------------------------------------------------------------


def kms_key_arn(cfg: Config) -> str:
    """``emr.kms_key_arn``, checked to be a key ARN (not an alias or a bare key id: IAM policies and EMR's
    local-disk encryption need the key's ARN)."""
    key = cfg.emr.kms_key_arn
    if not key:
        raise ValueError("emr.kms_key_arn is not set: at-rest encryption needs a KMS key "
                         "(e.g. --set emr.kms_key_arn=arn:aws:kms:us-east-1:123456789012:key/<key-id>)")
    if not _KMS_KEY_ARN.fullmatch(key):
        raise ValueError(f"emr.kms_key_arn must be a KMS key ARN like "
                         f"arn:aws:kms:us-east-1:123456789012:key/<key-id>, got {key!r}")
    return key


def tls_certificates(cfg: Config) -> str:
    """``emr.tls_certificates``: the s3:// URI of the zip of PEM files EMR's PEM provider reads."""
    uri = cfg.emr.tls_certificates
    if not uri:
        raise ValueError("emr.tls_certificates is not set: in-transit encryption needs a zip of PEM certificates "
                         "in S3 (e.g. --set emr.tls_certificates=s3://my-bucket/classeg/certs.zip)")
    if not _S3_URI.fullmatch(uri) or not uri.startswith("s3://") or not uri.endswith(".zip"):
        raise ValueError(f"emr.tls_certificates must be the s3:// URI of a .zip of PEM files, got {uri!r}")
    return uri


def security_configuration(cfg: Config, *, at_rest: bool | None = None,
                           in_transit: bool | None = None) -> dict[str, Any]:
    """The EMR security configuration document (``{"EncryptionConfiguration": {...}}``; JSON-encode it for
    CreateSecurityConfiguration).

    ``at_rest`` (default: whether ``emr.kms_key_arn`` is set): EMRFS data in S3 with SSE-KMS and local disks,
    EBS volumes included, with that key. ``in_transit`` (default: whether ``emr.tls_certificates`` is set): TLS
    with the PEM certificates zip. Asking for one whose key is unset raises ValueError naming the key, as does
    asking for neither.
    """
    at_rest = bool(cfg.emr.kms_key_arn) if at_rest is None else at_rest
    in_transit = bool(cfg.emr.tls_certificates) if in_transit is None else in_transit
    if not (at_rest or in_transit):
        raise ValueError("a security configuration needs at-rest or in-transit encryption: set emr.kms_key_arn "
                         "and/or emr.tls_certificates")
    encryption: dict[str, Any] = {"EnableAtRestEncryption": at_rest, "EnableInTransitEncryption": in_transit}
    if at_rest:
        key = kms_key_arn(cfg)
        encryption["AtRestEncryptionConfiguration"] = {
            "S3EncryptionConfiguration": {"EncryptionMode": "SSE-KMS", "AwsKmsKey": key},
            "LocalDiskEncryptionConfiguration": {"EncryptionKeyProviderType": "AwsKms", "AwsKmsKey": key,
                                                 "EnableEbsEncryption": True},
        }
    if in_transit:
        encryption["InTransitEncryptionConfiguration"] = {
            "TLSCertificateConfiguration": {"CertificateProviderType": "PEM", "S3Object": tls_certificates(cfg)}}
    return {"EncryptionConfiguration": encryption}


def _canonical(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def configuration_name(cfg: Config, document: Mapping[str, Any]) -> str:
    """``<emr.cluster_name>-<12 hex digits of the document's sha256>``: the same settings get the same name, so
    a rerun of ``emr up`` finds and reuses it, and changed settings get a new one (EMR's are immutable)."""
    digest = hashlib.sha256(_canonical(document).encode("utf-8")).hexdigest()[:12]
    return f"{cfg.emr.cluster_name}-{digest}"


@dataclass(frozen=True)
class SecurityPlan:
    """The security configuration a cluster gets: its ``name``; ``document`` and the ``create`` request when
    classeg makes it (both None when ``emr.security_configuration`` names an existing one)."""

    name: str
    document: dict[str, Any] | None = None
    create: ApiRequest | None = None

    def same_document(self, stored: str) -> bool:
        """Whether ``stored`` (DescribeSecurityConfiguration's JSON string) holds this plan's settings."""
        return self.document is not None and json.loads(stored) == self.document


def plan(cfg: Config) -> SecurityPlan | None:
    """The cluster's security configuration: ``emr.security_configuration`` if set, else one rendered from
    ``emr.kms_key_arn``/``emr.tls_certificates``; None when none of the three is set (no encryption)."""
    named = cfg.emr.security_configuration
    if named:
        validate(ApiRequest("emr", "DescribeSecurityConfiguration", {"Name": named}))
        return SecurityPlan(named)
    if not (cfg.emr.kms_key_arn or cfg.emr.tls_certificates):
        return None
    document = security_configuration(cfg)
    name = configuration_name(cfg, document)
    create = validate(ApiRequest("emr", "CreateSecurityConfiguration",
                                 {"Name": name, "SecurityConfiguration": _canonical(document)}))
    return SecurityPlan(name, document, create)


# --- the instance role's policy -------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # without a trailing slash; "" for the whole bucket


def s3_location(uri: str, key: str) -> S3Location:
    """Bucket and key prefix of an s3:// (or s3a://, s3n://) URI; ValueError naming ``key`` otherwise."""
    match = _S3_URI.fullmatch(uri or "")
    if not match:
        raise ValueError(f"{key} must be an s3://bucket/prefix URI, got {uri!r}")
    return S3Location(match.group(1), (match.group(2) or "").rstrip("/"))


def configured_locations(cfg: Config) -> dict[str, list[tuple[str, S3Location]]]:
    """``{"read": [(key, location)...], "write": [...]}``: every config key that holds an s3:// URI, sorted into
    what the jobs read and what they write. A key holding one that has no rule raises ValueError naming it, so
    that a new location key cannot be left out of the policy unnoticed."""
    found: dict[str, list[tuple[str, S3Location]]] = {"read": [], "write": []}
    for section in SECTIONS:
        for name, value in getattr(cfg, section).to_dict().items():
            if not (isinstance(value, str) and value.startswith(_S3_SCHEMES)):
                continue
            key = f"{section}.{name}"
            if key in WRITE_KEYS:
                found["write"].append((key, s3_location(value, key)))
            elif key in READ_KEYS:
                found["read"].append((key, s3_location(value, key)))
            else:
                raise ValueError(f"{key} holds an s3:// location ({value!r}) but classeg.emr.security has no rule "
                                 "for it: add the key to READ_KEYS or WRITE_KEYS")
    return found


def configured_kms_keys(cfg: Config) -> list[str]:
    """``emr.kms_key_arn`` (checked) and any other KMS key ARN a config key holds (an S3 SSE-KMS key, say):
    objects written with a key can only be read back by a role that may use it."""
    keys = {kms_key_arn(cfg)} if cfg.emr.kms_key_arn else set()
    for section in SECTIONS:
        keys.update(value for value in getattr(cfg, section).to_dict().values()
                    if isinstance(value, str) and _KMS_KEY_ARN.fullmatch(value))
    return sorted(keys)


def _partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def _object_arn(partition: str, location: S3Location) -> str:
    # prefix* rather than prefix/*: EMRFS keeps a directory as a "<prefix>_$folder$" marker object beside it.
    # The cost is that a sibling sharing the prefix's text (scores-v2 beside scores) is covered too.
    return f"arn:{partition}:s3:::{location.bucket}/{location.prefix}*"


def _list_statements(partition: str, locations: Iterable[S3Location]) -> list[dict[str, Any]]:
    prefixes: dict[str, set[str] | None] = {}
    for location in locations:
        if not location.prefix:
            prefixes[location.bucket] = None  # the whole bucket: no condition
        elif prefixes.get(location.bucket, set()) is not None:
            prefixes.setdefault(location.bucket, set()).add(f"{location.prefix}*")
    statements = []
    for number, bucket in enumerate(sorted(prefixes), start=1):
        statement: dict[str, Any] = {"Sid": f"ListBucket{number}", "Effect": "Allow", "Action": ["s3:ListBucket"],
                                     "Resource": [f"arn:{partition}:s3:::{bucket}"]}
        if prefixes[bucket] is not None:
            statement["Condition"] = {"StringLike": {"s3:prefix": sorted(prefixes[bucket])}}
        statements.append(statement)
    return statements


def instance_role_policy(cfg: Config, *, read: Iterable[str] = (), write: Iterable[str] = ()) -> dict[str, Any]:
    """A least-privilege IAM policy document for the cluster's instance role (``emr.instance_profile``).

    Object access under every configured s3:// location (``READ_KEYS``: GetObject; ``WRITE_KEYS``: Put, Get,
    Delete, AbortMultipartUpload), plus ``read``/``write`` URIs given on the command line (e.g. an evaluate
    ``--output``); ListBucket on each bucket limited by an ``s3:prefix`` condition to those prefixes;
    kms:Decrypt/Encrypt/GenerateDataKey on ``emr.kms_key_arn`` and any other KMS key ARN in the config. Checked
    with ``check_policy`` and against IAM's PutRolePolicy model. ValueError when no s3:// location is configured.
    """
    found = configured_locations(cfg)
    found["read"] += [("--read", s3_location(uri, "--read")) for uri in read]
    found["write"] += [("--write", s3_location(uri, "--write")) for uri in write]
    if not (found["read"] or found["write"]):
        raise ValueError("no s3:// location is configured, so there is nothing to grant: set emr.wheelhouse, "
                         "emr.log_uri, score.archive, score.output... or pass --read/--write")
    partition = _partition(cfg.emr.region)
    statements: list[dict[str, Any]] = []
    for sid, kind, actions in (("ReadInputs", "read", READ_ACTIONS), ("WriteOutputs", "write", WRITE_ACTIONS)):
        resources = sorted({_object_arn(partition, location) for _, location in found[kind]})
        if resources:
            statements.append({"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources})
    statements += _list_statements(partition, [location for kind in ("read", "write") for _, location in found[kind]])
    keys = configured_kms_keys(cfg)
    if keys:
        statements.append({"Sid": "UseKmsKey", "Effect": "Allow", "Action": KMS_ACTIONS, "Resource": keys})
    policy = {"Version": POLICY_VERSION, "Statement": statements}
    check_policy(policy)
    validate(ApiRequest("iam", "PutRolePolicy", {"RoleName": cfg.emr.instance_profile, "PolicyName": POLICY_NAME,
                                                 "PolicyDocument": json.dumps(policy)}))
    return policy


_ARN = re.compile(r"arn:aws[a-z-]*:(s3|kms):[^\s*]*\*?")
_S3_OBJECT_ARN = re.compile(r"arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^*\s]*\*")
_S3_BUCKET_ARN = re.compile(r"arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def check_policy(policy: Mapping[str, Any]) -> None:
    """The shape of a policy from ``instance_role_policy``: Version 2012-10-17, a non-empty Statement list of
    Allow statements with unique alphanumeric Sids, ``service:Action`` lists, S3 object resources as
    ``arn:aws:s3:::bucket/prefix*`` and bucket resources only for ListBucket, and a size within IAM's inline
    role policy quota. Raises ValueError naming the first problem."""
    if policy.get("Version") != POLICY_VERSION:
        raise ValueError(f"policy Version must be {POLICY_VERSION!r}, got {policy.get('Version')!r}")
    statements = policy.get("Statement")
    if not isinstance(statements, list) or not statements:
        raise ValueError(f"policy Statement must be a non-empty list, got {statements!r}")
    sids = [statement.get("Sid") for statement in statements]
    if len(set(sids)) != len(sids) or not all(isinstance(sid, str) and sid.isalnum() for sid in sids):
        raise ValueError(f"statement Sids must be unique and alphanumeric, got {sids}")
    for statement in statements:
        _check_statement(statement)
    size = len(re.sub(r"\s", "", json.dumps(policy)))
    if size > INLINE_POLICY_MAX_CHARS:
        raise ValueError(f"the policy is {size} characters without whitespace; IAM allows "
                         f"{INLINE_POLICY_MAX_CHARS} for a role's inline policies: use fewer, broader prefixes")


def _check_statement(statement: Mapping[str, Any]) -> None:
    sid = statement.get("Sid")
    if statement.get("Effect") != "Allow":
        raise ValueError(f"statement {sid}: Effect must be 'Allow', got {statement.get('Effect')!r}")
    actions, resources = statement.get("Action"), statement.get("Resource")
    if not isinstance(actions, list) or not actions or not all(
            isinstance(action, str) and re.fullmatch(r"(s3|kms):[A-Za-z]+", action) for action in actions):
        raise ValueError(f"statement {sid}: Action must be a non-empty list of s3:/kms: actions, got {actions!r}")
    if not isinstance(resources, list) or not resources:
        raise ValueError(f"statement {sid}: Resource must be a non-empty list, got {resources!r}")
    for resource in resources:
        if not (isinstance(resource, str) and _ARN.fullmatch(resource)):
            raise ValueError(f"statement {sid}: {resource!r} is not an S3 or KMS ARN")
        if resource.split(":")[2] == "kms":
            if not _KMS_KEY_ARN.fullmatch(resource):
                raise ValueError(f"statement {sid}: {resource!r} is not a KMS key ARN")
        elif actions == ["s3:ListBucket"]:
            if not _S3_BUCKET_ARN.fullmatch(resource):
                raise ValueError(f"statement {sid}: ListBucket applies to buckets (arn:aws:s3:::bucket), "
                                 f"got {resource!r}")
        elif not _S3_OBJECT_ARN.fullmatch(resource):
            raise ValueError(f"statement {sid}: object resources must look like arn:aws:s3:::bucket/prefix*, "
                             f"got {resource!r}")
