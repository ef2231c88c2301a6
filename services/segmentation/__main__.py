"""python -m services.segmentation"""

from services.segmentation.app import create_app
from shared.service import main

asgi, run = main("services.segmentation.__main__", create_app, "Voucherstream segmentation service")

if __name__ == "__main__":
    run()
