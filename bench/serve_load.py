"""Load for `pipe serve`: CLIENTS threads each send one text per `POST /predict`, on
keep-alive connections, until every text of TEXTS (a one-column CSV) has been sent once;
prints requests/s and the p50/p99 latency. With BIG, one more client first sends a single
request of BIG texts (TEXTS repeated); the others start 0.2 s after it is sent, and the line
also says how long the big one took.

Usage: python3 bench/serve_load.py URL TEXTS CLIENTS [BIG]
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
    big = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    texts = [row["text"] for row in csv.DictReader(open(path))]
    host = urllib.parse.urlparse(url).netloc
    # Warm up: the first run of a batch shape is slower.
    post(http.client.HTTPConnection(host), texts[:1])
    queue = list(enumerate(texts))
    lock = threading.Lock()
    latencies = []
    big_done = []
    big_sent = threading.Event()
    spans = []

    def client():
        connection = http.client.HTTPConnection(host)
        if big:
            big_sent.wait()
            time.sleep(0.2)
        while True:
            with lock:
                if not queue:
                    return
                _, text = queue.pop()
            start = time.perf_counter()
            post(connection, [text])
            end = time.perf_counter()
            with lock:
                latencies.append(end - start)
                spans.append((start, end))

    def big_client():
        body = json.dumps({"texts": [texts[i % len(texts)] for i in range(big)]})
        connection = http.client.HTTPConnection(host, timeout=600)
        start = time.perf_counter()
        connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
        big_sent.set()
        answers = answer_of(connection)
        took = time.perf_counter() - start
        assert len(answers["predictions"]) == big
        big_done.append(took)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    if big:
        threads.insert(0, threading.Thread(target=big_client))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The small requests' wall time (with BIG they start later, and the big one may end later).
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    line = (f"pipe serve, {clients:>2} client(s), 1 text per request, {len(latencies)} requests: "
            f"{len(latencies) / wall:.1f} requests/s, p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms")
    if big:
        line += f"; beside one request of {big} texts, answered in {big_done[0]:.1f} s"
    print(line)


def post(connection, texts):
    body = json.dumps({"texts": texts})
    connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
    return answer_of(connection)


def answer_of(connection):
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        sys.exit(f"POST /predict answered {response.status}: {data[:200]!r}")
    return json.loads(data)


if __name__ == "__main__":
    main()
