"""Atheris fuzz target for the wire protocol (what a hostile child controls).

    python fuzz/fuzz_protocol.py -max_total_time=600

Feeds arbitrary bytes, split at fuzzer-chosen points, to FrameReader and
validate(); the only acceptable failure is ProtocolError. Anything else (a
crash, another exception type) is a finding.
"""

import sys

import atheris

with atheris.instrument_imports():
    from mistral_sandbox.runner import protocol


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    max_frame = fdp.ConsumeIntInRange(1, 1 << 16)
    cuts = fdp.ConsumeIntInRange(0, 8)
    rest = fdp.ConsumeBytes(fdp.remaining_bytes())
    reader = protocol.FrameReader(max_frame=max_frame)
    step = max(1, len(rest) // (cuts + 1))
    try:
        for i in range(0, len(rest) or 1, step):
            for msg in reader.feed(rest[i:i + step]):
                protocol.validate(msg)
        reader.eof()
    except protocol.ProtocolError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
