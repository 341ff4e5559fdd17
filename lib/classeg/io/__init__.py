"""classeg's one storage layer: every read, atomic write, delete and listing, local or S3, goes through it.

- :mod:`classeg.io.uri`: :class:`~classeg.io.uri.Location`, one parsed location with its local, boto3 and
  Spark/Hadoop forms (:func:`~classeg.io.uri.parse_uri`, :func:`~classeg.io.uri.join`).
- :mod:`classeg.io.s3`: the one S3 client factory from a frozen :class:`~classeg.io.s3.S3Settings` (region,
  endpoint, retries, timeouts), and the retry loop every S3 request uses.
- :mod:`classeg.io.files`: read, atomic write (fsync, then rename; one PUT on S3), delete and list, local and
  S3 alike.
"""
