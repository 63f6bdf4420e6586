"""tvm-nas."""
