"""An S3 endpoint for e2e.sh: moto's server on 127.0.0.1:PORT with the bucket ``hep2-bench``."""

from __future__ import annotations

import sys
import time

import boto3
from moto.server import ThreadedMotoServer

if __name__ == "__main__":
    port = int(sys.argv[1])
    ThreadedMotoServer(ip_address="127.0.0.1", port=port).start()
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="x", aws_secret_access_key="x",
                 region_name="us-east-1").create_bucket(Bucket="hep2-bench")
    print("ready", flush=True)
    while True:
        time.sleep(3600)
