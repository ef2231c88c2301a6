"""python -m services.consent"""

from services.consent.app import create_app
from shared.service import run

if __name__ == "__main__":
    run(create_app(), title="Voucherstream consent service", version="1")
