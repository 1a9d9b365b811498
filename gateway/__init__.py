"""The console gateway: relays a browser's noVNC WebSocket to a desktop's VNC port, by single-use token."""
