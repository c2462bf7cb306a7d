#!/usr/bin/env bash
# tether in CI, as the recipes in docs/ci.md call it: `plan` on a pull request (the plan
# printed, and posted to the pull request when TETHER_COMMENT_ON is set; exit 0 whether or
# not it changes something, 1 on error), `apply` on merge (waiting until Healthy).
#
#   TETHER_PATH, TETHER_APP, TETHER_NAMESPACE   the folder, the application, the namespace
#   TETHER_COMMENT_ON                           gitea, github or gitlab (optional)
#   TETHER_COMMENT_URL                          the host's address (Gitea; self-hosted ones)
#   TETHER_COMMENT_REPO, TETHER_COMMENT_PR      owner/name and the pull request's number
#   TETHER_COMMENT_TOKEN_FILE                   a file holding the API token
#   TETHER (default: tether), TETHER_TIMEOUT (default: 5m), KUBECONFIG as kubectl reads it
set -euo pipefail
mode=${1:?usage: tether-ci.sh plan|apply}
tether=${TETHER:-tether}
target=(--path "${TETHER_PATH:?}" --app "${TETHER_APP:?}" -n "${TETHER_NAMESPACE:?}")

case "$mode" in
plan)
  args=(plan "${target[@]}" --detailed-exitcode)
  if [ -n "${TETHER_COMMENT_ON:-}" ]; then
    args+=(--comment-on "$TETHER_COMMENT_ON" --comment-repo "${TETHER_COMMENT_REPO:?}"
      --comment-pr "${TETHER_COMMENT_PR:?}" --comment-token-file "${TETHER_COMMENT_TOKEN_FILE:?}")
    if [ -n "${TETHER_COMMENT_URL:-}" ]; then args+=(--comment-url "$TETHER_COMMENT_URL"); fi
  fi
  set +e
  "$tether" "${args[@]}"
  code=$?
  set -e
  case $code in
  0) echo "tether-ci: the cluster already holds this revision" ;;
  2) echo "tether-ci: the plan above changes the cluster; apply runs on merge" ;;
  *) exit "$code" ;;
  esac
  ;;
apply)
  "$tether" apply "${target[@]}" --wait --timeout "${TETHER_TIMEOUT:-5m}"
  ;;
*)
  echo "tether-ci: unknown mode $mode (plan or apply)" >&2
  exit 1
  ;;
esac
