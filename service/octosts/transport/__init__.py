"""Transport: the only package that imports grpc and octosts._gen."""
