"""python -m services.issuance"""

from services.issuance.app import create_app
from shared.service import main

asgi, run = main("services.issuance.__main__", create_app, "Voucherstream issuance service")

if __name__ == "__main__":
    run()
