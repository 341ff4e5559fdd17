"""spark-submit entry point for `classeg train` (same flags).

    spark-submit --master yarn --deploy-mode cluster jobs/train.py --task classify --scans s3://BUCKET/tables/lgg --output s3://BUCKET/models --num-proc 4

Parses the flags, loads the config, builds the SparkSession through classeg.spark.get_spark and calls the
library (see classeg.commands). Run `classeg train --help` for every flag.

Exits 0 when the job succeeded, 1 when it failed (one line on stderr naming the cause), 2 for a usage or config
error; the SparkSession it started is stopped either way, so spark-submit ends and frees the cluster's cores.
"""
import sys

from classeg.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
