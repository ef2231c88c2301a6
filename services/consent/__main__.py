"""python -m services.consent"""

from services.consent.app import create_app
from shared.service import main

asgi, run = main("services.consent.__main__", create_app, "Voucherstream consent service")

if __name__ == "__main__":
    run()
