"""Every touch of lm-eval's internals: the one place to look when lm-eval changes.

Modules: ``versions`` (supported range, the start-up check, :class:`LmEvalUnsupported`),
``request_model`` (the ``POST /job`` model derived from lm-eval's ``run`` parser), ``argv``
(the job's command line), ``key_values`` (lm-eval's ``key=value`` parser), ``effective``
(what lm-eval will run with, ``--config`` merged its way), ``log_wording`` (the log lines
progress parsing and retries key on), ``fastrun`` (the job launcher that serves lm-eval's
task index from a cache), ``task_catalog`` (the task catalog's child: lm-eval's task index
flattened to JSON). This package's ``__init__`` imports nothing: every job process imports it
(``python -m lmeval_trio.harness.fastrun``).

How an unrecognised internal fails, everywhere:

* **start-up message** -- :func:`versions.require_internals` (run by ``lmeval-trio serve``
  and ``asgi.py`` before anything is served) raises :class:`versions.LmEvalUnsupported`;
  the server prints ``lmeval-trio: lm-eval X is not supported: <internal> <why>; <what we
  use it for> (supported: ...)`` and exits 2. Used where the server cannot be correct
  without the internal (deriving requests, judging them).
* **logged fallback to stock** -- the job runs as stock ``python -m lm_eval`` would, and its
  log says why (``[fastrun] fastrun disabled: ...``). Used where the internal only makes
  things faster.
* **degrades** -- a few touches only refine what the API shows (the request schema's types,
  progress); when they no longer match, the job runs unchanged and that refinement is lost.

Upgrade checklist: every lm-eval internal or behaviour the server relies on (0.4.10 through
0.4.13 have them all; ``tests/test_compat.py`` runs on each, see ``.ci/run``). Each entry:
the internal, ``[how it fails]``, what we use it for (where), what breaks if it changes.

``lm_eval._cli.harness.HarnessCLI``                                        [start-up message]
    use: build lm-eval's CLI to get its ``run`` parser (request_model.run_parser)
    breaks: no request model, so no ``POST /job`` and no validation
``HarnessCLI()._subparsers.choices["run"]`` (an ``argparse.ArgumentParser``) [start-up message]
    use: the parser the request model is derived from, and that judges every request
    breaks: as above
``run`` parser ``._actions``: ``option_strings``, ``dest``, ``nargs``, ``type``, ``help``,
``default``; ``argparse._StoreTrueAction``; the class name ``MergeDictAction``      [degrades]
    use: one API field per long option, its JSON type, lm-eval's help and default
    breaks: a field's type (an unknown action is free text lm-eval's own parser judges);
    a renamed ``dest`` renames the field
argparse's ``argument --<flag>: ...`` error wording                                [degrades]
    use: name the field in a 422 (request_model.check_with_parser)
    breaks: the 422 names no field
``lm_eval._cli.utils.try_parse_json``, ``lm_eval._cli.utils.key_val_to_dict``  [start-up message]
    use: read model_args and the other mapping flags as lm-eval does (key_values: secrets)
    breaks: secrets inside ``key=value`` text would go unmasked
``lm_eval.config.evaluate_config.EvaluatorConfig`` (a dataclass),
``EvaluatorConfig._parse_dict_args``               [start-up message; its source read, not imported]
    use: merge a ``--config`` file with the flags the way lm-eval's ``from_cli`` does
    (effective); the policy judges the merged values
    breaks: ``--config`` requests judged on other values than lm-eval runs with
``EvaluatorConfig._normalize_seed`` (0.4.13 on)             [absent: skipped, as that lm-eval does]
    use: a config file's ``seed`` as lm-eval reads it (effective._parsed)
``EvaluatorConfig.model``'s default ``"hf"`` (effective.LM_EVAL_DEFAULT_MODEL)    [test_compat]
    use: the model of a request that names none (policy's remote-code rules)
    breaks: the policy judges another model than the one lm-eval runs
flags lm-eval parses into dicts (key_values.MAPPING_FLAGS)                      [test_compat]
    use: where secrets are looked for; breaks: a new one's secrets go unmasked
flags that are paths (request_model.PATH_FIELDS)                                  [by hand]
    use: the policy judges them as paths; breaks: a new path flag is judged as text
``--use_cache``'s path is a prefix, lm-eval adds ``_rank<N>.db``                   [by hand]
    use: each job's response cache (argv.cache_prefix; policy's cache-file check)
    breaks: resume re-runs answered requests; the policy checks other files
results under ``--output_path``: ``<dir>/<model>/results_<ts>.json``, or ``<stem>_<ts>.json``
beside a requested ``<stem>.json``                        [``GET /job/{id}/results`` says so]
    use: find a finished job's results (results.find_results_file)
    breaks: "job N wrote no results file"
log lines ``Running <type> requests``, ``Building contexts for``, ``Initializing <model>
model, with arguments``, ``Cached requests: N, Requests remaining: M``; bar descriptions
``Running <type> requests``, ``Requesting API``; models that window rolling requests first
(log_wording.SOURCES lists where lm-eval prints each)                [degrades; test_compat]
    use: progress phases and counts (log_wording, progress.py)
    breaks: progress stays where it was until the job ends (100 when it succeeds)
API models re-raise the HTTP client's error once their own retries give up
(``reraise=True``, ``raise_for_status()``), and the remote tokenizer words its failure
``RemoteTokenizer: <method> <url> failed after N attempts: <requests' error>``
(log_wording.SOURCES)                                                [degrades; test_compat]
    use: judge a failed attempt transient, worth another (log_wording.transient_error)
    breaks: such failures are final, as without max_attempts
``lm_eval.tasks._index``: ``TaskIndex.build``, ``._iter_yaml_files``, ``.process_cfg``
(staticmethods), ``load_yaml`` (is ``lm_eval.tasks._yaml_loader.load_yaml``), ``log``,
``Entry``; each wrapped function's signature and source SHA-256 per release
(fastrun/_patch.VALIDATED_SOURCES; none before 0.4.12)      [logged fallback to stock]
    use: fastrun serves the built-in task index from a cache (~20 s saved per job)
    breaks: "fastrun disabled: <why>; falling back to stock lm_eval task indexing"
``lm_eval.__main__.cli_evaluate``                                 [logged fallback to stock]
    use: run lm-eval's CLI in fastrun and forked jobs (fastrun/_main.run_lm_eval)
    breaks: "cli_evaluate is missing; running lm_eval's __main__ the stock way"
``lm_eval.tasks._index.TaskIndex.build``, ``Entry.name/kind/yaml_path/cfg/tags``,
``Kind.TASK/PY_TASK/GROUP/TAG`` (task_catalog)                                    [degrades]
    use: the task catalog (GET /tasks, the task checks at submission)
    breaks: a renamed field gives nulls; a failed build leaves submissions unchecked (saying so)
modules fork servers import ahead of the jobs (fastrun/_warm.PRELOAD)   [debug log; stock]
    breaks: a renamed module is imported by the job itself, as stock does
``LMEVAL_LOG_LEVEL`` and lm-eval's log line layout (fastrun/_log)                  [cosmetic]
    use: fastrun's own lines look like lm-eval's and obey the same level
the ``lm_eval`` console script's ``sys.path[0]`` (fastrun/_main)                  [by hand]
    use: ``!function`` imports resolve as in a stock run, never from the job's folder
models that trust remote code by default (sglang), tasks that load a tokenizer with remote
code (ruler, niah_, babilong): policy.REMOTE_CODE_MODEL_DEFAULTS, REMOTE_CODE_TASK_PREFIXES
                                                                                  [by hand]
    use: the code-execution rule; breaks: a new such default goes unjudged

For a new lm-eval release: install it, run ``tests/test_compat.py`` and ``tests/test_fastrun.py``;
for each failing row, read the new source, adapt the module named, and (fastrun) add the
release's digests with ``python -m lmeval_trio.harness.fastrun._patch``; re-check the entries
marked ``[by hand]`` (``grep -rn trust_remote_code lm_eval/models lm_eval/tasks``); then widen
``versions.SUPPORTED_LM_EVAL`` and the ``lm-eval`` pin in ``pyproject.toml``, and add the
release to ``.ci/run``.
"""
