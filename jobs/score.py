"""spark-submit entry point for `classeg score` (same flags).

    spark-submit --master yarn --deploy-mode cluster jobs/score.py --archive s3://BUCKET/archive --classifier s3://BUCKET/models/cls --segmenter s3://BUCKET/models/seg --output s3://BUCKET/scores

Parses the flags, loads the config, builds the SparkSession through classeg.spark.get_spark and calls the
library (see classeg.commands). Run `classeg score --help` for every flag.

Exits 0 when the job succeeded, 1 when it failed (one line on stderr naming the cause), 2 for a usage or config
error; the SparkSession it started is stopped either way, so spark-submit ends and frees the cluster's cores.
"""
import sys

from classeg.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
