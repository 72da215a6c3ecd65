/*
 * Stand-alone timing driver for the C core (no Python): random problem, one
 * tf_general call per round, best of the rounds.  Used for the C kernel
 * measurements in docs/DESIGN.md and docs/STATUS.md:
 *
 *   gcc -std=c99 -O3 -ffp-contract=off -fopenmp -Icsrc benchmarks/c_driver.c csrc/truncfast.c -o /tmp/c_driver -lm
 *   TRUNCFAST_C_VL=8 /tmp/c_driver N M L threads rounds     # e.g. 200000 8 8 1 15
 *
 * Prints the best time and two result values (identical for every kernel width).
 */
#include "truncfast.h"
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <time.h>
static double rn(unsigned long long *s){ double u=0; for(int i=0;i<12;i++){ *s = *s*6364136223846793005ULL+1442695040888963407ULL; u += (double)(*s>>11)/9007199254740992.0;} return u-6.0; }
static double now(){ struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+1e-9*t.tv_nsec; }
int main(int argc, char**argv){
  long N = argc>1? atol(argv[1]) : 200000; int M = argc>2? atoi(argv[2]):8, L = argc>3?atoi(argv[3]):8; int th = argc>4?atoi(argv[4]):1; int reps = argc>5?atoi(argv[5]):15;
  unsigned long long s=42;
  double *R=malloc(sizeof(double)*L*M*M), *b=malloc(sizeof(double)*L*M), *X=malloc(sizeof(double)*N*M), *T=malloc(sizeof(double)*L*M);
  int64_t *lab=malloc(sizeof(int64_t)*N);
  for(int l=0;l<L;l++){ /* Gram-Schmidt random orthogonal */
    double *A=R+l*M*M; for(int i=0;i<M*M;i++) A[i]=rn(&s);
    for(int i=0;i<M;i++){ for(int j=0;j<i;j++){ double d=0; for(int k=0;k<M;k++) d+=A[i*M+k]*A[j*M+k]; for(int k=0;k<M;k++) A[i*M+k]-=d*A[j*M+k]; } double n=0; for(int k=0;k<M;k++) n+=A[i*M+k]*A[i*M+k]; n=sqrt(n); for(int k=0;k<M;k++) A[i*M+k]/=n; }
    for(int i=0;i<M;i++) b[l*M+i]=0.5*rn(&s);
    for(int i=0;i<M;i++) T[l*M+i]=rn(&s);
  }
  for(long n=0;n<N*M;n++) X[n]=rn(&s);
  for(long n=0;n<N;n++) lab[n]=n%L;
  double loss, *gb=malloc(sizeof(double)*L*M), *G=malloc(sizeof(double)*L*M*M);
  double best=1e9;
  for(int r=0;r<reps;r++){ double t0=now(); tf_general(R,b,X,lab,N,M,L,L,T,NULL,NULL,NULL,0,0,1,4096,th,&loss,gb,G,NULL,NULL); double t=now()-t0; if(t<best)best=t; }
  printf("%s N=%ld M=%d L=%d th=%d: best %.2f ms  (loss %.17g G01 %.17g)\n", argv[0], N, M, L, th, best*1e3, loss, G[1]);
}
