"""What every handler uses: declaring functions and their triggers (registry), the context a
handler gets (context), object access (objects), the ports an HTTP API is built from
(api_ports), and the queue's task contract the workers run (tasks)."""
