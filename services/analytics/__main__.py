"""python -m services.analytics"""

from services.analytics.app import create_app
from shared import logs
from shared.service import run

TITLE = "Voucherstream redemption analytics"


def asgi():
    service = create_app()
    logs.configure(service.settings.service, service.settings.log_level)
    return service.http(title=TITLE, version="1")


if __name__ == "__main__":
    run(create_app(), factory="services.analytics.__main__:asgi", title=TITLE, version="1")
