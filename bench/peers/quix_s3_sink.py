"""Quix Streams' S3 file sink (Parquet) over one topic: the peer of ``sluice warehouse``.

Run by ``bench.warehouse_e2e`` with the interpreter of its own venv (quixstreams is not a
sluice dependency). Quix's defaults throughout, except the commit interval, which the
benchmark passes so both contenders flush on the same cadence.
"""

from __future__ import annotations

import argparse

from quixstreams import Application
from quixstreams.sinks.community.file.formats import ParquetFormat
from quixstreams.sinks.community.file.s3 import S3FileSink


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--directory", required=True, help="key prefix ([A-Za-z0-9 ._/] only)")
    parser.add_argument("--commit-interval", type=float, default=5.0)
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args()

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=args.commit_interval,
        state_dir=args.state_dir,
        loglevel="INFO",
    )
    topic = app.topic(args.topic, value_deserializer="json")
    # Credentials, region and endpoint: AWS_* environment variables (the sink's defaults).
    sink = S3FileSink(bucket=args.bucket, directory=args.directory, format=ParquetFormat())
    app.dataframe(topic).sink(sink)
    app.run()  # until SIGTERM: then it flushes the sink and commits the last checkpoint


if __name__ == "__main__":
    main()
