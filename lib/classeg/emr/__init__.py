"""Running classeg on AWS EMR GPU clusters.

- ``render``: cluster, step, state-machine and schedule requests from the templates in ``emr/templates/`` and
  the config, checked offline against botocore's service models.
- ``security``: the EMR security configuration (encryption at rest and in transit) and the instance role's
  least-privilege IAM policy, from the config.
- ``aws``: boto3 clients (endpoints from config), sending requests, waiting for steps, step log locations.
- ``wheelhouse``: the wheels, bootstrap action and job scripts every node installs from.
- ``commands``: ``classeg emr wheelhouse|up|submit|wait|down|schedule|policy`` (``add_cli`` wires them into
  ``classeg``).

See docs/emr.md for the walk-through from an empty account to a scheduled scoring run.
"""
from classeg.emr.commands import add_cli

__all__ = ["add_cli"]
