"""spark-submit entry point for `classeg ingest` (same flags).

    spark-submit --master yarn --deploy-mode cluster jobs/ingest.py --dataset lgg --input s3://BUCKET/raw/lgg --output s3://BUCKET/tables/lgg

Parses the flags, loads the config, builds the SparkSession through classeg.spark.get_spark and calls the
library (see classeg.commands). Run `classeg ingest --help` for every flag.

Exits 0 when the job succeeded, 1 when it failed (one line on stderr naming the cause), 2 for a usage or config
error; the SparkSession it started is stopped either way, so spark-submit ends and frees the cluster's cores.
"""
import sys

from classeg.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
