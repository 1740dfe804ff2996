"""Answer one line on 127.0.0.1:PORT for every connection."""
import socket
import sys

port, message = int(sys.argv[1]), sys.argv[2]
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen()
while True:
    conn, _ = server.accept()
    conn.sendall((message + "\n").encode())
    conn.close()
