"""The engine as a long-lived service: the socket server, its job queue and workers, and the rules
for the files a client may name. The CLI's `nst serve` starts it; the job itself runs through
engine/pipeline.py, which knows nothing of sockets."""
