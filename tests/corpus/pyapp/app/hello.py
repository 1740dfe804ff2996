"""The smallest WSGI app: says who serves it."""


def app(environ, start_response):
    body = b"served by waitress in a portable virtualenv\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
