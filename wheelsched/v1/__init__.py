"""Generated gRPC/protobuf code for the wheelsched.v1 API (built from proto/)."""
