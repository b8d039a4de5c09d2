from typing import Any

class Extension:
    ns_uri: str | None
    ns_alias: str | None
    def getExtensionArgs(self) -> dict[str, str]: ...
    def toMessage(self, message: Any = None) -> Any: ...
