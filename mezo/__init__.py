"""MeZO on FSDP2. As a library: `from mezo import ZOEngine` (README, "MeZO in your own loop")."""


def __getattr__(name):  # lazy: `import mezo.experiments...` stays free of torch
    if name == "ZOEngine":
        from mezo.zo import ZOEngine
        return ZOEngine
    raise AttributeError(f"module 'mezo' has no attribute {name!r}")


__all__ = ["ZOEngine"]
