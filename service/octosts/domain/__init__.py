"""The pure core: no grpc, protobuf, httpx or yaml imports here."""
