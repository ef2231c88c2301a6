"""python -m services.issuance"""

from services.issuance.app import create_app
from shared.service import run

if __name__ == "__main__":
    run(create_app(), title="Voucherstream issuance service", version="1")
