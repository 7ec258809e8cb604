"""What the demo and the tests need beside the product: the tiny-linux test guest
(`kubekvm_demo.tiny_linux`), built by `make run` (scripts/run-local), the QEMU tests and the
benchmarks. It runs `apt-get download`, so it is no part of the server or agent packages (it sits
outside `src/`, and neither the wheel nor the images contain it).
"""
