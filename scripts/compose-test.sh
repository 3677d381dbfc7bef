#!/usr/bin/env bash
# compose-test.sh runs workflows through the stack of deploy/compose.yaml
# (make compose-test, which builds the images first):
#
#   1. up: Redis (AOF), one projector, three workers, under a project name
#      of its own, so parallel runs and a developer's own stack do not meet;
#   2. examples/etl.yaml is submitted from a client container (`run` of the
#      graflow image in the stack's network) and must succeed with load = 100;
#   3. drain: a 30-task fan-out of 3 s sleeps is submitted; once worker-2
#      runs some of its tasks, `stop worker-2` sends it SIGTERM. It must
#      drain (log "worker draining" with in_flight > 0, then "worker
#      stopped") and exit 0 within its stop_grace_period (a SIGKILL would
#      give 137); the run must still succeed with total = 30, and `replay
#      verify` must pass on it; the tasks worker-2 ran when it was stopped
#      must have succeeded there, in their first attempt;
#   4. AOF: Redis is restarted (it saves no RDB snapshots: --save ""), and
#      the first run must still read back as succeeded.
#
# The stack, its network and its volume are always removed (trap), also on
# failure or Ctrl-C; on failure the services' logs are printed first. No
# port is published: every command reaches Redis inside the stack.
#
# Environment: COMPOSE (the compose command; default docker-compose, else
# "docker compose"; installed with apt-get when neither exists).
set -euo pipefail

cd "$(dirname "$0")/.."

FILE=deploy/compose.yaml
IMAGES=(graflow/graflow:dev graflow/redis:7.0)

SECONDS=0
log() { printf 'compose-test: [%3ds] %s\n' "$SECONDS" "$*" >&2; }
die() {
	log "FAIL: $*"
	exit 1
}

# The compose command: $COMPOSE, docker-compose (v1, python), or the
# docker compose plugin (v2); else install docker-compose with apt-get.
compose_cmd() {
	if [ -n "${COMPOSE:-}" ]; then
		echo "$COMPOSE"
	elif command -v docker-compose >/dev/null 2>&1; then
		echo docker-compose
	elif docker compose version >/dev/null 2>&1; then
		echo "docker compose"
	else
		log "neither docker-compose nor \"docker compose\" found; installing docker-compose with apt-get"
		local sudo=""
		[ "$(id -u)" -eq 0 ] || sudo=sudo
		local install=($sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-compose)
		"${install[@]}" >&2 || { $sudo apt-get update >&2 && "${install[@]}" >&2; } ||
			die "could not install docker-compose"
		echo docker-compose
	fi
}

for image in "${IMAGES[@]}"; do
	docker image inspect "$image" >/dev/null 2>&1 ||
		die "image $image not found: run make compose-test (it builds the images), or make redis image"
done

compose_str="$(compose_cmd)" || exit 1
read -r -a compose <<<"$compose_str"
project="graflow-ct-$$-$(date +%s)"
C=("${compose[@]}" -f "$FILE" -p "$project")
tmp="$(mktemp -d)"

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ "$rc" -ne 0 ]; then
		log "services' logs (last 40 lines each):"
		"${C[@]}" logs --no-color --tail 40 >&2 2>&1 || true
	fi
	"${C[@]}" down -v --remove-orphans -t 5 >/dev/null 2>&1 ||
		log "could not remove project $project: docker-compose -p $project -f $FILE down -v"
	rm -rf "$tmp"
	if [ "$rc" -eq 0 ]; then
		log "ok (project $project removed)"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# cid SERVICE prints the id of the service's container (docker ps by the
# labels docker-compose sets: faster than "docker-compose ps -q").
cid() {
	docker ps -aq --filter "label=com.docker.compose.project=$project" \
		--filter "label=com.docker.compose.service=$1" --filter "label=com.docker.compose.oneoff=False"
}

# graflow runs a graflow command in the running projector container (the
# image holds nothing but /graflow), with the stack's REDIS_URL. It calls
# docker exec directly: docker-compose (python) takes a second to start.
graflow() { docker exec "$projector" /graflow "$@"; }

# wait_for DESC SECONDS CMD...: run CMD every half second until it succeeds.
wait_for() {
	local desc="$1" deadline=$(($(date +%s) + $2))
	shift 2
	until "$@" >/dev/null 2>&1; do
		[ "$(date +%s)" -lt "$deadline" ] || die "timed out waiting for $desc"
		sleep 0.5
	done
}

# result RUN TASK prints the task's result from "graflow status RUN".
result() { graflow status "$1" | awk -v t="$2" '$1 == t { print $NF }'; }

log "starting project $project ($FILE)"
export GRAFLOW_UI_PORT=0 # a free port: parallel stacks do not fight over 8080
"${C[@]}" up -d >/dev/null 2>&1 || { "${C[@]}" up -d; die "up failed"; }
projector="$(cid projector)"
three_workers() { [ "$(graflow workers | grep -c '^worker-[123] ')" -eq 3 ]; }
wait_for "three workers to register" 60 three_workers
one_projector() { graflow projectors | grep -q '^projector-1 '; }
wait_for "the projector to register" 30 one_projector

# submit ARGS... runs "graflow submit ARGS" in a client container of its
# own (a one-off `run` of the image in the stack's network), stdin the spec.
submit() {
	local err="$tmp/run.err"
	"${C[@]}" run --rm -T --no-deps projector submit "$@" 2>"$err" || {
		cat "$err" >&2
		return 1
	}
}

# Docker must have been given the workers' stop_grace_period (its value is
# checked by deploy/deploy_test.go): without it, stop would SIGKILL them
# after Docker's default 10 s, whatever their drain timeout.
for w in worker-1 worker-2 worker-3; do
	grace="$(docker inspect -f '{{.Config.StopTimeout}}' "$(cid "$w")")"
	[ "$grace" -gt 10 ] 2>/dev/null || die "$w: stop timeout \"$grace\", want the stop_grace_period of $FILE"
done

log "submitting examples/etl.yaml from a client container"
out="$(submit --wait - <examples/etl.yaml)" || die "etl run did not succeed: $out"
etl="$(head -n1 <<<"$out")"
[ "$(result "$etl" load)" = 100 ] || die "etl run $etl: load is not 100"
log "etl run $etl succeeded, load = 100"

# The dashboard, published on loopback, shows the run.
ui_port="$("${C[@]}" port ui 8080 | sed 's/.*://')"
[ -n "$ui_port" ] || die "the ui service publishes no port"
ui_shows_run() { curl -fsS "http://127.0.0.1:$ui_port/runs/$etl" | grep -q succeeded; }
wait_for "the dashboard to show run $etl" 30 ui_shows_run
log "the dashboard on 127.0.0.1:$ui_port shows run $etl succeeded"

# A fan-out of 30 tasks of 3 s, more than the 24 slots of three workers.
drain_spec() {
	printf 'workflow: drain\ntasks:\n'
	local deps=()
	for i in $(seq 0 29); do
		printf '  - {id: part-%d, handler: sleep, args: {ms: 3000, value: 1}}\n' "$i"
		deps+=("part-$i")
	done
	local IFS=,
	printf '  - {id: total, handler: sum, deps: [%s]}\n' "${deps[*]}"
}
log "submitting a 30-task fan-out, then stopping worker-2 while it runs tasks"
drain="$(drain_spec | submit -)" || die "submit failed: $drain"
runs_on_worker2() { graflow status "$drain" | awk '$3 == "running" && $6 == "worker-2" { n++ } END { exit n ? 0 : 1 }'; }
wait_for "worker-2 to run a task of $drain" 30 runs_on_worker2
on_worker2="$(graflow status "$drain" | awk '$3 == "running" && $6 == "worker-2" { print $1 }')"
t0=$(date +%s)
"${C[@]}" stop worker-2 >/dev/null 2>&1
stopped_in=$(($(date +%s) - t0))
w2="$(cid worker-2)"
code="$(docker inspect -f '{{.State.ExitCode}}' "$w2")"
[ "$code" = 0 ] || die "worker-2 exited $code after SIGTERM (137: killed before it drained)"
w2log="$("${C[@]}" logs --no-color worker-2)"
# JSON lines (the default off a terminal), or console ones.
grep -Eq '"msg":"worker draining".*"in_flight":[1-9]|worker draining.* in_flight=[1-9]' <<<"$w2log" || die "worker-2 did not log a drain with tasks in flight"
grep -q 'worker stopped' <<<"$w2log" || die "worker-2 did not log \"worker stopped\""
log "worker-2 drained and exited 0 in ${stopped_in} s"
graflow wait --timeout 90s "$drain" >/dev/null || die "run $drain did not succeed after worker-2 stopped"
[ "$(result "$drain" total)" = 30 ] || die "run $drain: total is not 30"
# The tasks worker-2 ran when it was stopped were finished by worker-2, in
# their first attempt: drained, not handed back or reclaimed.
for task in $on_worker2; do
	graflow status "$drain" | awk -v t="$task" '$1 == t && $3 == "succeeded" && $4 == 1 && $6 == "worker-2" { ok = 1 } END { exit !ok }' ||
		die "task $task, running on worker-2 when it was stopped, did not succeed there in attempt 1"
done
graflow replay verify "$drain" >/dev/null || die "replay verify $drain failed"
log "drain run $drain succeeded, total = 30, worker-2's $(wc -w <<<"$on_worker2") tasks in flight finished by worker-2, replay verified"

log "restarting Redis: the runs must come back from the AOF"
"${C[@]}" restart redis >/dev/null 2>&1
etl_succeeded() { graflow status "$etl" | grep -q '^run .* status succeeded '; }
wait_for "run $etl to read back as succeeded after the Redis restart" 30 etl_succeeded
