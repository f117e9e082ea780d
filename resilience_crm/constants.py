"""Names the whole app shares, in a module that imports nothing of the app's own."""

#: The ``RESILIENCE_CRM`` setting's name.
SETTING_NAME = "RESILIENCE_CRM"

#: Operation classes: what a protected call or a request does, for circuits and rate limits.
OP_CLASSES = ("read", "write", "rpc", "auth")

#: The circuit each operation class uses unless a call names another.
OP_CIRCUITS = {op_class: f"crm.{op_class}" for op_class in OP_CLASSES}

#: Circuits that exist in every project, whether or not ``CIRCUITS`` names them.
DEFAULT_CIRCUITS = tuple(OP_CIRCUITS.values())
