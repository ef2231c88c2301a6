"""python -m services.issuance"""

from services.issuance.app import create_app
from shared import logs
from shared.service import run

TITLE = "Voucherstream issuance service"


def asgi():
    """One worker process's app (ISSUANCE_HTTP_WORKERS > 1 / CONSENT_HTTP_WORKERS > 1)."""
    service = create_app()
    logs.configure(service.settings.service, service.settings.log_level)
    return service.http(title=TITLE, version="1")


if __name__ == "__main__":
    run(create_app(), factory="services.issuance.__main__:asgi", title=TITLE, version="1")
