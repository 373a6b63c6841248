"""Serve a package's tail stages over the Open Inference Protocol (KServe v2)."""
