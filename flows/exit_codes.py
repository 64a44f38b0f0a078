"""What the CLIs' exit codes mean (README, "Commands", its exit codes paragraph): one list, so a script can tell a
run that must be fixed by its user from one that may simply be tried again."""
EXIT_OK = 0
EXIT_STEP_FAILED = 1  # a step failed after its retries: running again may help
EXIT_FIX_INPUT = 2  # the config, data, a file or an argument is wrong: the one line printed says what to fix
EXIT_INTERRUPTED = 130  # Ctrl-C: the run stopped at a checkpoint and resumes with the same command
EXIT_TERMINATED = 143  # SIGTERM: likewise
EXIT_OUTPUT_CLOSED = 141  # what the shell shows for SIGPIPE: the reader of the output (`| head`) stopped reading
