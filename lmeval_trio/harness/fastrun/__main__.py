"""``python -m lmeval_trio.harness.fastrun [--index-cache DIR] [--] <lm_eval args>``."""

from lmeval_trio.harness.fastrun._main import main

if __name__ == "__main__":
    main()
