"""The node: engine + write-ahead logs + ticker, served over gRPC."""
