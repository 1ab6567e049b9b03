"""Load for `pipe serve`: CLIENTS threads each send one text per `POST /predict`, on
keep-alive connections, until every text of TEXTS (a one-column CSV) has been sent once;
prints requests/s and the p50/p99 latency.

Usage: python3 bench/serve_load.py URL TEXTS CLIENTS
"""

import csv
import http.client
import json
import sys
import threading
import time
import urllib.parse


def main():
    url, path, clients = sys.argv[1], sys.argv[2], int(sys.argv[3])
    texts = [row["text"] for row in csv.DictReader(open(path))]
    host = urllib.parse.urlparse(url).netloc
    # Warm up: the first run of a batch shape is slower.
    post(http.client.HTTPConnection(host), texts[:1])
    queue = list(enumerate(texts))
    lock = threading.Lock()
    latencies = []

    def client():
        connection = http.client.HTTPConnection(host)
        while True:
            with lock:
                if not queue:
                    return
                _, text = queue.pop()
            start = time.perf_counter()
            post(connection, [text])
            took = time.perf_counter() - start
            with lock:
                latencies.append(took)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    print(f"pipe serve, {clients:>2} client(s), 1 text per request, {len(latencies)} requests: "
          f"{len(latencies) / wall:.1f} requests/s, p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms")


def post(connection, texts):
    body = json.dumps({"texts": texts})
    connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        sys.exit(f"POST /predict answered {response.status}: {data[:200]!r}")
    return json.loads(data)


if __name__ == "__main__":
    main()
