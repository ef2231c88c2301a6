import sys

from deploy.helm.consumers import main

sys.exit(main())
