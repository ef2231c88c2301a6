"""python -m services.segmentation"""

from services.segmentation.app import run

if __name__ == "__main__":
    run()
