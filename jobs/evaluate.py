"""spark-submit entry point for `classeg evaluate` (same flags), in either of its two modes.

One model alone (metrics.json and figures):

    spark-submit --master yarn --deploy-mode cluster jobs/evaluate.py --model s3://BUCKET/models/cls --scans s3://BUCKET/tables/lgg --output s3://BUCKET/eval

The Class-Seg pipeline at the classifier's operating point (classseg_metrics.json and classseg_slices/):

    spark-submit --master yarn --deploy-mode cluster jobs/evaluate.py --classifier s3://BUCKET/models/cls --segmenter s3://BUCKET/models/seg --scans s3://BUCKET/tables/lgg --output s3://BUCKET/eval-classseg --split test

Parses the flags, loads the config, builds the SparkSession through classeg.spark.get_spark and calls the
library (see classeg.commands). Run `classeg evaluate --help` for every flag.

Exits 0 when the job succeeded, 1 when it failed (one line on stderr naming the cause), 2 for a usage or config
error; the SparkSession it started is stopped either way, so spark-submit ends and frees the cluster's cores.
"""
import sys

from classeg.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
