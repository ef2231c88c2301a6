"""python -m services.analytics"""

from services.analytics.app import create_app
from shared.service import main

asgi, run = main("services.analytics.__main__", create_app, "Voucherstream redemption analytics")

if __name__ == "__main__":
    run()
