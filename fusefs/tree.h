/* tree.h - the directory tree a thaw mount shows, built from store listings.
 *
 * Objects under the mount's prefix are files and common prefixes ("a/") are
 * directories.  A directory is listed on first visit (store_list with
 * delimiter "/", all pages), and listed again when asked for a name it lacks
 * or opened for reading once its listing is older than the list TTL: names
 * that appeared are added, names gone from the store leave, and a file whose
 * object changed (its ETag in the listing) gets a new node, so a new inode that
 * shares no size or pages with the old one.  A node that leaves its directory
 * is marked gone but never freed, so an inode number stays valid for the life
 * of the mount (the kernel's references and open handles keep working, on
 * the version they had), and on_gone is told, so the kernel can be asked to
 * drop the name.  With keep_names (--rw: local writes are against the
 * versions mounted) names only ever join.  A directory's children are an
 * immutable sorted array published with a release store; a re-listing that
 * changes them publishes a new array and keeps the old one until the
 * unmount, so readers need no lock.  thaw's own chunk store (".thaw/") is
 * hidden at every level.
 *
 * Inode numbers index a two-level table that readers walk without a lock:
 * slots are published with release stores and never move. */
#ifndef THAW_FUSEFS_TREE_H
#define THAW_FUSEFS_TREE_H

#include <pthread.h>
#include <stdint.h>

#include "../objstore/store.h"

struct tfile;
struct tnode;

/* A directory's children, sorted by name; never changed once published. */
struct kids {
	size_t n;
	struct kids *retired; /* t->retired chain, freed at tree_destroy */
	struct tnode *v[];
};

struct tnode {
	uint64_t ino;
	struct tnode *parent;
	char *name;          /* "" for the root */
	char *key;           /* directory: full prefix ("" or ending in '/'); file: full key */
	int is_dir;
	uint64_t list_size;  /* from the listing (for an image: its index's size) */
	int64_t mtime;
	char *etag;          /* from the listing, or NULL: how a re-listing tells a replaced object */

	/* directories */
	int listed;          /* kids are valid (acquire-load it) */
	struct kids *kids;   /* sorted by name (acquire-load it: tree_kids) */
	uint64_t listed_ns;  /* when last listed (t->mu) */
	uint64_t gen;        /* bumped when kids is replaced (atomic) */
	uint64_t gen_opened; /* gen when last opened for reading (atomic) */
	uint64_t gen_probed; /* gen + 1 when its files were last queued to open (prober.c; atomic) */
	struct store *dstore;/* file:// only: a store rooted at this directory */

	int gone;            /* out of its directory (removed or replaced in the store; atomic) */

	/* files */
	struct tfile *f;
	uint64_t nlookup;    /* the kernel's references (atomic) */
};

#define TREE_L1 65536
#define TREE_L2 4096

struct tree {
	struct store *s;         /* the mount's store */
	struct thaw_url url;     /* where the root is: file:// root is the mount dir */
	struct store_config scfg;/* for the per-directory stores of file:// */
	int per_dir_stores;      /* file://: images keep their chunks per directory */
	pthread_mutex_t mu;      /* listing, table growth, per-directory stores */
	uint64_t list_ttl_ns;    /* re-list a directory at most this often (0 = never) */
	struct kids *retired;    /* replaced children arrays (mu) */
	int keep_names;          /* names never leave and are never replaced */
	/* Optional: told of each node a re-listing adds, and of each it takes
	 * out of dir (not under mu). */
	void (*on_new)(void *arg, struct tnode *n);
	void *on_new_arg;
	void (*on_gone)(void *arg, struct tnode *dir, struct tnode *n);
	void *on_gone_arg;
	struct tnode **tab[TREE_L1];
	uint64_t next_ino;       /* atomic */
	struct tnode *root;
};

/* Set up the tree of location u (a prefix) in store s; lists nothing yet. */
int tree_init(struct tree *t, struct store *s, const struct thaw_url *u, const struct store_config *scfg);
/* Free every node and the per-directory stores (not t->s, not the files). */
void tree_destroy(struct tree *t);

/* The node of an inode number, or NULL. */
struct tnode *tree_get(struct tree *t, uint64_t ino);
/* Make sure dir has been listed; 0 or <0 + err_msg naming the prefix. */
int tree_list(struct tree *t, struct tnode *dir);
/* List dir again if its listing is older than the list TTL, taking in what
 * changed; 1 if a name appeared (or got a new node), 0 if not (a failed
 * listing is logged, and the old one kept until the TTL passes again), <0 +
 * err_msg only if dir could not be listed even once. */
int tree_refresh(struct tree *t, struct tnode *dir);
/* Whether n, or a directory above it, has left the tree. */
int tree_gone(const struct tnode *n);
/* dir's children now (never NULL; empty before the first listing). */
const struct kids *tree_kids(const struct tnode *dir);
/* A child of a listed directory by name, or NULL. */
struct tnode *tree_child(const struct tnode *dir, const char *name);
/* Where a file's bytes are: the store and the key to hand to blob_open. */
int tree_file_location(struct tree *t, struct tnode *file, struct store **s, char *key, size_t keylen);
/* The path of n relative to the mount root ("" for the root). */
void tree_path(const struct tnode *n, char *buf, size_t len);
/* Highest inode number handed out so far. */
uint64_t tree_max_ino(struct tree *t);

#endif
