"""``python -m lmeval_trio.fastrun [--index-cache DIR] [--] <lm_eval args>``."""

from lmeval_trio.fastrun._main import main

if __name__ == "__main__":
    main()
