const http = require("http");
const port = Number(process.env.PORT || 18277);
http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/plain" });
  res.end("served by a portable node " + process.version + "\n");
}).listen(port, "127.0.0.1", () => console.log(`listening on 127.0.0.1:${port}`));
