#!/usr/bin/env python3
"""README's gRPC flow, as grpcurl runs it: the built server in its development default, and a
client that knows nothing of the API but what server reflection tells it (grpcurl is a Go
program Debian does not package; this stands in for it).

Lists the services, gets a key, rotates, gets both versions back, describes and lists the id,
and asks the health service. Exits non-zero at the first answer that is not README's.

Usage: grpc_reflection_flow.py PATH/TO/rkms-server
"""

import base64
import sys
import tempfile
import time

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import built_server


def start(binary, data_dir):
    server, address = built_server.start(binary, "--data-dir", data_dir)
    if server is None:
        sys.exit("rkms-server did not start")
    return server, address


class Reflected:
    """Calls methods by their full names, with messages built from reflected descriptors."""

    def __init__(self, channel):
        self.channel = channel
        self.database = ProtoReflectionDescriptorDatabase(channel)
        self.pool = descriptor_pool.DescriptorPool(self.database)

    def services(self):
        return set(self.database.get_services())

    def call(self, method, fields):
        service_name, method_name = method.rsplit("/", 1)
        service = self.pool.FindServiceByName(service_name)
        described = service.FindMethodByName(method_name)
        request_class = message_factory.GetMessageClass(described.input_type)
        response_class = message_factory.GetMessageClass(described.output_type)
        stub = self.channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        request = json_format.ParseDict(fields, request_class())
        return json_format.MessageToDict(stub(request, timeout=10))


def expect(condition, what):
    if not condition:
        sys.exit(f"grpc flow: {what}")


def main():
    with tempfile.TemporaryDirectory() as data_dir:
        server, address = start(sys.argv[1], data_dir)
        try:
            with grpc.insecure_channel(address) as channel:
                api = Reflected(channel)
                services = api.services()
                expect({"rkms.v1.KeyService", "grpc.health.v1.Health"} <= services, f"services {services}")
                first = api.call("rkms.v1.KeyService/GetKey", {"id": "orders"})
                expect(first["version"] == 1 and len(base64.b64decode(first["key"])) == 32, f"GetKey {first}")
                rotated = api.call("rkms.v1.KeyService/RotateKey", {"id": "orders"})
                expect(rotated == {"id": "orders", "version": 2, "state": "KEY_STATE_ACTIVE"}, f"RotateKey {rotated}")
                second = api.call("rkms.v1.KeyService/GetKey", {"id": "orders"})
                expect(second["version"] == 2 and second["key"] != first["key"], f"GetKey after rotation {second}")
                again = api.call("rkms.v1.KeyService/GetKey", {"id": "orders", "version": 1})
                expect(again["key"] == first["key"], "version 1 is not the first key")
                info = api.call("rkms.v1.KeyService/DescribeKey", {"id": "orders"})
                expect(info["currentVersion"] == 2 and len(info["versions"]) == 2, f"DescribeKey {info}")
                listed = api.call("rkms.v1.KeyService/ListKeys", {"prefix": "ord"})
                expect([k["id"] for k in listed["keys"]] == ["orders"], f"ListKeys {listed}")
                deadline = time.time() + 10
                while True:
                    health = api.call("grpc.health.v1.Health/Check", {"service": "rkms.v1.KeyService"})
                    if health.get("status") == "SERVING" or time.time() > deadline:
                        break
                    time.sleep(0.2)
                expect(health.get("status") == "SERVING", f"Health {health}")
            print("grpc flow: README's grpcurl flow answered as documented, through reflection alone")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
