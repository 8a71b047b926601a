#!/bin/sh
# pcurl.sh URL SIZE PART N: N curl processes, each GETting its share of the
# object in PART-sized ranged requests over one kept-alive connection.
url=$1 size=$2 part=$3 n=$4
tmp=$(mktemp -d)
nparts=$(( (size + part - 1) / part ))
i=0
while [ $i -lt $n ]; do
	: >"$tmp/cfg$i"
	p=$i
	while [ $p -lt $nparts ]; do
		s=$((p * part)); e=$((s + part - 1)); [ $e -ge $size ] && e=$((size - 1))
		printf 'url = "%s"\nrange = "%d-%d"\noutput = "/dev/null"\n' "$url" $s $e >>"$tmp/cfg$i"
		p=$((p + n))
	done
	i=$((i + 1))
done
start=$(date +%s.%N)
i=0; while [ $i -lt $n ]; do curl -s -K "$tmp/cfg$i" & i=$((i + 1)); done; wait
end=$(date +%s.%N)
echo "$size / ($end - $start) / 1000000" | bc -l | cut -c1-6
rm -rf "$tmp"
