set -e
cd /work/main
for r in 1 2; do
  for v in base pf2; do
    code=/work/main; [ $v = pf2 ] && code=/tmp/s9/pf2tree
    mkdir -p /tmp/s9/pf/$v-$r
    PYTHON=/work/main/.venv/bin/python bash docs/results/issue19-session9/e2e_cpu.sh $code pf$v$r /tmp/s9/pf/$v-$r/e2e.json 9 9531 > /tmp/s9/pf/$v-$r/out.log 2>&1
    echo "$(date -u +%T) $v-$r"
  done
done
