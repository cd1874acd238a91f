"""A workload with a known shape: sets its comm, then makes exactly the
getsockopt(2) calls it is told to.  usage: workload.py COMM N_SO_TYPE N_SO_RCVBUF [SLEEP]"""
import ctypes
import socket
import sys
import time

PR_SET_NAME = 15
ctypes.CDLL(None).prctl(PR_SET_NAME, sys.argv[1].encode(), 0, 0, 0)
n_type, n_rcvbuf = int(sys.argv[2]), int(sys.argv[3])
pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
s = socket.socket()
for _ in range(n_type):
    s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)  # optname 3
time.sleep(pause)
for _ in range(n_rcvbuf):
    s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)  # optname 8
