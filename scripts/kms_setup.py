"""Creates a symmetric master key and alias/rkms-<region> in each emulated KMS region.

Usage: kms_setup.py REGION[,REGION...] ENDPOINT[,ENDPOINT...]  (same order)
Goes through the AWS API (boto3), as a real deployment's setup would.
"""
import sys

import boto3


def main() -> None:
    regions = sys.argv[1].split(",")
    endpoints = sys.argv[2].split(",")
    if len(regions) != len(endpoints):
        sys.exit("kms_setup.py: regions and endpoints differ in number")
    for region, endpoint in zip(regions, endpoints):
        kms = boto3.client("kms", region_name=region, endpoint_url=endpoint)
        key = kms.create_key(Description=f"RKMS test master key, {region}", KeySpec="SYMMETRIC_DEFAULT")
        kms.create_alias(AliasName=f"alias/rkms-{region}", TargetKeyId=key["KeyMetadata"]["KeyId"])


if __name__ == "__main__":
    main()
